"""Encoders built from a model that is not a sentence-transformers folder, DRAMA's students among them: a decoder
LLM (Hugging Face weights, or a GGUF file that transformers dequantizes through its `gguf` integration), kept to
its first L transformer layers, pooled on the last token (an EOS appended to every input) or by mean, and trained
in full or through LoRA (`peft`). The result is a plain sentence-transformers model: it saves, reloads and
evaluates like any other.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import torch

from .errors import ConfigError
from .fileio import atomic_dir, cache_root

POOLINGS = ("mean", "lasttoken", "cls")


def check_positions(model, max_seq_length: int | None, key: str) -> None:
    """Refuse a max_seq_length (named by its params key or flag) beyond the positions `model` has embeddings for:
    longer inputs would index past them."""
    positions = getattr(model.transformers_model.config, "max_position_embeddings", None)
    if max_seq_length and positions and max_seq_length > positions:
        raise ConfigError(f"{key}: {max_seq_length} is beyond the model's {positions} positions")


def is_gguf(resolved: str) -> bool:
    path = Path(resolved)
    if not path.is_file():
        return False
    with open(path, "rb") as handle:
        return handle.read(4) == b"GGUF"


def build_encoder(resolved: str, pooling: str, keep_layers: int, max_seq_length: int | None, device: str):
    """A SentenceTransformer over a Hugging Face model folder, hub id or GGUF file: its first `keep_layers`
    transformer layers (0: all), `pooling` over the token embeddings, L2-normalised. Built once per source and
    settings, then loaded from the cache (dequantizing a GGUF file takes a minute on a laptop CPU)."""
    from sentence_transformers import SentenceTransformer

    if pooling not in POOLINGS:
        raise ConfigError(f"train.pooling: '{pooling}' is not one of {', '.join(POOLINGS)}")
    folder = _cached_folder(resolved, pooling, keep_layers)
    model = SentenceTransformer(str(folder), device=device)
    if max_seq_length:
        model.max_seq_length = max_seq_length
    return model


def _cached_folder(resolved: str, pooling: str, keep_layers: int) -> Path:
    source = Path(resolved)
    stamp = f"{source.stat().st_size}:{source.stat().st_mtime_ns}" if source.exists() else "hub"
    key = hashlib.sha256(json.dumps([str(source), stamp, pooling, keep_layers]).encode()).hexdigest()[:24]
    folder = cache_root() / "encoders" / key
    if not (folder / "modules.json").exists():
        with atomic_dir(folder) as tmp:
            _write_encoder(resolved, pooling, keep_layers, tmp)
    return folder


def _write_encoder(resolved: str, pooling: str, keep_layers: int, out: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import AutoModel, AutoTokenizer

    source = {"pretrained_model_name_or_path": resolved}
    if is_gguf(resolved):  # dequantized to float32 weights
        source = {"pretrained_model_name_or_path": str(Path(resolved).parent), "gguf_file": Path(resolved).name}
    tokenizer = AutoTokenizer.from_pretrained(**source)
    model = AutoModel.from_pretrained(**source, dtype=torch.float32)
    if keep_layers:
        keep_first_layers(model, keep_layers)
    _plain_weights(model)
    _plain_text_tokenizer(tokenizer, append_eos=pooling == "lasttoken")
    with tempfile.TemporaryDirectory(prefix="synthir-encoder-") as hf_folder:
        model.save_pretrained(hf_folder)
        tokenizer.save_pretrained(hf_folder)
        word = Transformer(
            hf_folder,
            max_seq_length=min(tokenizer.model_max_length, 512),
            # plain text through forward(): never a chat template around a passage
            modality_config={"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
            module_output_name="token_embeddings",
        )
        pool = Pooling(word.get_embedding_dimension(), pooling_mode=pooling)
        SentenceTransformer(modules=[word, pool, Normalize()], device="cpu").save(str(out))


def keep_first_layers(model, keep: int) -> None:
    """Prune a transformer to its first `keep` layers (DRAMA prunes a Llama this way), config included."""
    config = model.config
    total = config.num_hidden_layers
    if not 0 < keep <= total:
        raise ConfigError(f"train.keep_layers: {keep} is not between 1 and the model's {total} layers")
    stacks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == total]
    if not stacks:
        raise ConfigError(f"train.keep_layers: no list of {total} layers found in {type(model).__name__}")
    stack = stacks[0]
    del stack[keep:]
    config.num_hidden_layers = keep
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = config.layer_types[:keep]
    if getattr(config, "max_window_layers", None) is not None:
        config.max_window_layers = min(config.max_window_layers, keep)


def _plain_weights(model) -> None:
    """Weights dequantized from GGUF save as ordinary float32 safetensors."""
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model.is_quantized = False
    model.hf_quantizer = None
    config.use_cache = False


def _plain_text_tokenizer(tokenizer, append_eos: bool) -> None:
    """Texts in, token ids out: no chat template, right padding, a pad token, and with last-token pooling an EOS
    after every (truncated) input, so the pooled token is the same end marker for every text."""
    tokenizer.chat_template = None
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if append_eos:
        if tokenizer.eos_token is None:
            raise ConfigError("train.pooling: lasttoken needs a tokenizer with an end-of-sequence token")
        tokenizer.add_eos_token = True


def set_attention_dropout(model, p: float) -> int:
    """Set the dropout on attention probabilities of every attention module (BERT-like `dropout` modules,
    decoder `attention_dropout` floats) and in the config; returns how many modules changed. Hidden-state
    dropout is left as it is."""
    changed = 0
    for module in model.modules():
        projections = (("query", "key", "value"), ("q", "k", "v"), ("q_proj", "k_proj", "v_proj"))
        if not any(all(hasattr(module, name) for name in names) for names in projections):
            continue  # not the module computing attention probabilities (e.g. MPNet's output block)
        if isinstance(getattr(module, "dropout", None), torch.nn.Dropout):
            module.dropout.p = p
            changed += 1
        elif isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = p
            changed += 1
        config = getattr(module, "config", None)
        for key in ("attention_probs_dropout_prob", "attention_dropout"):
            if config is not None and isinstance(getattr(config, key, None), float):
                setattr(config, key, p)
    return changed


def add_lora(model, rank: int) -> None:
    """Train the transformer through LoRA adapters of `rank` on every linear layer; its own weights freeze."""
    from peft import LoraConfig, get_peft_model

    word = model[0]
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear")
    word.model = get_peft_model(word.model, config)


def merge_lora(model) -> None:
    """Fold trained adapters into the weights: the saved folder is a plain sentence-transformers model."""
    word = model[0]
    if hasattr(word.model, "merge_and_unload"):
        word.model = word.model.merge_and_unload()
