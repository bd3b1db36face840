import random

import pytest
import torch

from synthir.errors import ConfigError
from synthir.models import resolve
from synthir.retrieval import load_encoder
from synthir.training.adapt import delete_words, denoising_batches, denoising_loss, sample_passages, save_adapted, tsdae
from synthir.training.model_card import base_model_id, describe_adaptation, read_card
from tests.conftest import MINILM, run_stage, write_beir

PASSAGES = [
    "aspirin lowers the risk of a second heart attack in older patients",
    "the protein folds into a beta sheet at low temperature",
    "vitamin d deficiency is common among night shift workers",
    "a mutation in the gene raises the odds of early onset disease",
]


def test_delete_words_deletes_the_ratio_and_keeps_at_least_one_word():
    rng = random.Random(0)
    text = " ".join(f"w{i}" for i in range(2000))
    kept = delete_words(text, 0.6, rng).split()
    assert 0.35 < len(kept) / 2000 < 0.45  # TSDAE keeps 40% of the words
    assert kept == [w for w in text.split() if w in set(kept)]  # in their order
    assert delete_words("one two three", 0.0, rng) == "one two three"
    assert delete_words("one two three", 0.999999, rng) in {"one", "two", "three"}
    assert delete_words("", 0.6, rng) == ""


def test_denoising_batches_cover_every_passage_once_per_epoch_in_a_seeded_order():
    batches = list(denoising_batches(PASSAGES, 3, 2, 0.6, seed=5))
    assert [len(originals) for _, originals in batches] == [3, 1, 3, 1]
    for epoch in (batches[:2], batches[2:]):
        assert sorted(text for _, originals in epoch for text in originals) == sorted(PASSAGES)
    for corrupted, originals in batches:
        assert all(set(c.split()) <= set(o.split()) for c, o in zip(corrupted, originals, strict=True))
    assert batches == list(denoising_batches(PASSAGES, 3, 2, 0.6, seed=5))
    assert batches != list(denoising_batches(PASSAGES, 3, 2, 0.6, seed=6))


def test_sample_passages_is_all_or_a_seeded_subset():
    texts = [f"p{i}" for i in range(10)]
    assert sample_passages(texts, 0, 1) == texts and sample_passages(texts, 20, 1) == texts
    subset = sample_passages(texts, 4, 1)
    assert len(set(subset)) == 4 and set(subset) <= set(texts) and subset == sample_passages(texts, 4, 1)


def test_tsdae_teaches_the_encoder_to_reconstruct_and_keeps_its_limit(tiny_encoder, tmp_path):
    """The decoder reads only the sentence embedding and shares the encoder's weights, so a falling
    reconstruction loss must come with a changed encoder; the adapted model saves and reloads as an encoder."""
    model = load_encoder(tiny_encoder, device="cpu", dtype="float32")
    before = model.encode(PASSAGES, convert_to_tensor=True)
    limit = model.max_seq_length
    summary = tsdae(model, PASSAGES * 8, epochs=4, batch_size=4, lr=5e-3, deletion_ratio=0.6, max_seq_length=32, seed=0)
    assert summary["steps"] == 32 and summary["passages"] == 32
    assert summary["loss_last"] < summary["loss_first"] * 0.8
    assert model.max_seq_length == limit
    after = model.encode(PASSAGES, convert_to_tensor=True)
    assert not torch.allclose(before, after, atol=1e-3)
    save_adapted(model, tmp_path / "adapted")
    reloaded = load_encoder(str(tmp_path / "adapted"), device="cpu", dtype="float32")
    assert torch.allclose(reloaded.encode(PASSAGES, convert_to_tensor=True), after, atol=1e-5)


def test_the_decoder_shares_the_encoders_weights(tiny_encoder):
    """TSDAE ties them: the encoder's layers are the decoder's, so reconstruction trains the encoder itself."""
    model = load_encoder(tiny_encoder, device="cpu", dtype="float32")
    loss = denoising_loss(model)
    encoder, decoder = model.transformers_model, loss.decoder.bert
    assert encoder.embeddings.word_embeddings.weight is decoder.embeddings.word_embeddings.weight
    assert encoder.encoder.layer[1].attention.self.query.weight is decoder.encoder.layer[1].attention.self.query.weight


def test_the_adapted_card_names_the_base_with_its_language_and_license(tmp_path):
    """A model trained from models/adapted names the original base model, and keeps its language and license."""
    model = load_encoder(MINILM, device="cpu", dtype="float32")
    describe_adaptation(model, MINILM, resolve(MINILM))
    save_adapted(model, tmp_path / "adapted")
    metadata = read_card(tmp_path / "adapted")[0]
    assert (metadata["language"], metadata["license"]) == ("en", "apache-2.0") and "tsdae" in metadata["tags"]
    adapted = str(tmp_path / "adapted")
    assert base_model_id(adapted, adapted) == "sentence-transformers/all-MiniLM-L6-v2"


def test_a_length_beyond_the_models_positions_names_the_key(tiny_encoder):
    model = load_encoder(tiny_encoder, device="cpu", dtype="float32")
    with pytest.raises(ConfigError, match=r"adapt\.max_seq_length: 512 is beyond the model.s 128 positions"):
        tsdae(model, PASSAGES, epochs=1, batch_size=2, lr=1e-4, deletion_ratio=0.6, max_seq_length=512, seed=0)


def test_tsdae_refuses_an_empty_corpus(tiny_encoder):
    model = load_encoder(tiny_encoder, device="cpu", dtype="float32")
    with pytest.raises(ConfigError, match="no passage"):
        tsdae(model, [], epochs=1, batch_size=2, lr=1e-4, deletion_ratio=0.6, max_seq_length=16, seed=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_the_adapt_stage_trains_on_train_device_not_on_whatever_this_machine_has(tmp_path, tiny_encoder):
    write_beir(tmp_path / "data", [{"_id": "d1", "title": "", "text": PASSAGES[0]}], qrels={"test": [("q", "d1", 1)]})
    changes = {"adapt": {"method": "tsdae"}, "train": {"base_model": tiny_encoder, "device": "cuda"}}
    done = run_stage("adapt", tmp_path, ["--data", "data", "--output", "adapted", "--metrics", "adapt.json"], changes)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.splitlines()[-1] == "error: train.device is cuda, but torch sees no GPU here: set it to cpu"
    assert not (tmp_path / "adapted").exists() and not (tmp_path / "adapt.json").exists()
