"""GGUF -> Hugging Face folder for vLLM (synthir.llm.hf_export), on a tiny random Qwen2 GGUF written here with
the `gguf` package: Q8_0 linear weights, a byte-level BPE vocabulary and a chat template. No vllm needed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from synthir.fileio import file_digest
from synthir.llm import hf_export
from synthir.llm.base import LLMError
from synthir.llm.hf_export import MANIFEST, hf_folder

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ y", "Ġy e", "Ġye s", "Ġ n", "Ġn o"]


def _byte_alphabet() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return list(bytes_to_unicode().values())


def write_tiny_gguf(path: Path) -> dict[str, torch.Tensor]:
    """A 2-layer, 64-d random Qwen2 as GGUF (llama.cpp's names and keys); returns the weights a loader should
    read back (the Q8_0 tensors dequantized), by Hugging Face name."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokens = _byte_alphabet() + [m.replace(" ", "") for m in MERGES] + SPECIAL
    config = Qwen2Config(
        vocab_size=len(tokens),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, config.num_hidden_layers)
    writer = gguf.GGUFWriter(path, "qwen2")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (len(tokens) - len(SPECIAL)) + [3] * len(SPECIAL))  # 3: control
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_pad_token_id(tokens.index("<|endoftext|>"))
    writer.add_chat_template(CHAT_TEMPLATE)
    expected = {}
    for name, tensor in model.state_dict().items():
        data = tensor.float().numpy()
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert target, name
        if data.ndim == 2 and name != "model.embed_tokens.weight":
            packed = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(target, packed, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            data = gguf.quants.dequantize(packed, gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(target, data)
        expected[name] = torch.from_numpy(data.copy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    path = tmp_path_factory.mktemp("tiny-gguf") / "model.gguf"
    return path, write_tiny_gguf(path)


@pytest.fixture(scope="module")
def converted(tiny_gguf, tmp_path_factory) -> tuple[Path, Path]:
    cache = tmp_path_factory.mktemp("cache")
    return hf_folder(str(tiny_gguf[0]), cache_root=cache), cache


def test_a_gguf_becomes_a_plain_bfloat16_folder_with_its_weights_and_manifest(tiny_gguf, converted):
    from safetensors.torch import load_file

    path, expected = tiny_gguf
    folder, cache = converted
    digest = file_digest(path)
    assert folder == cache / "hf" / digest[:16]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "qwen2" and "quantization_config" not in config
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["gguf_sha256"] == digest and manifest["dtype"] == "bfloat16" and manifest["source"] == str(path)
    weights = {}
    for shard in folder.glob("*.safetensors"):
        weights.update(load_file(shard))
    assert set(weights) == set(expected)
    for name, tensor in expected.items():
        assert weights[name].dtype == torch.bfloat16, name
        torch.testing.assert_close(weights[name].float(), tensor.bfloat16().float(), msg=name)
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_the_tokenizer_keeps_its_vocabulary_and_chat_template(converted):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(converted[0]))
    assert tokenizer.convert_ids_to_tokens(tokenizer(" yes no", add_special_tokens=False)["input_ids"]) == [
        "Ġyes",
        "Ġno",
    ]
    assert tokenizer.eos_token == "<|im_end|>"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_a_matching_manifest_is_reused_and_a_stale_one_converted_again(tiny_gguf, tmp_path, monkeypatch):
    path = tiny_gguf[0]
    folder = hf_folder(str(path), cache_root=tmp_path)
    calls = []
    real_convert = hf_export._convert
    monkeypatch.setattr(hf_export, "_convert", lambda *args: calls.append(args) or real_convert(*args))
    assert hf_folder(str(path), cache_root=tmp_path) == folder and not calls
    manifest = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({**manifest, "transformers": "0.0"}))
    assert hf_folder(str(path), cache_root=tmp_path) == folder and len(calls) == 1
    assert json.loads((folder / MANIFEST).read_text()) == manifest


def test_a_pkg_reference_is_resolved_then_converted(tiny_gguf, tmp_path, monkeypatch):
    site = tmp_path / "site-packages"
    (site / "tiny_gguf_pkg").mkdir(parents=True)
    (site / "tiny_gguf_pkg" / "model.gguf").write_bytes(tiny_gguf[0].read_bytes())
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("SYNTHIR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(hf_export, "_convert", lambda gguf_path, out: (out / "config.json").write_text("{}"))
    folder = hf_folder("pkg:tiny_gguf_pkg/model.gguf")
    assert folder.parent == tmp_path / "cache" / "hf"
    assert json.loads((folder / MANIFEST).read_text())["source"] == "pkg:tiny_gguf_pkg/model.gguf"


def test_folders_and_hub_ids_pass_through(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert hf_folder(str(tmp_path)) == tmp_path.resolve()
    assert str(hf_folder("Qwen/Qwen2.5-0.5B-Instruct")) == "Qwen/Qwen2.5-0.5B-Instruct"


def test_what_cannot_become_a_folder_is_one_clear_llm_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LLMError, match=r"a folder without config\.json"):
        hf_folder(str(tmp_path / "empty"))
    (tmp_path / "weights.bin").write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(LLMError, match="neither a GGUF file nor a Hugging Face model folder"):
        hf_folder(str(tmp_path / "weights.bin"))
    with pytest.raises(LLMError, match="no such file or folder"):
        hf_folder("./no-such-model")
    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(LLMError, match="cannot convert GGUF to a Hugging Face folder") as caught:
        hf_folder(str(tmp_path / "broken.gguf"), cache_root=tmp_path / "cache")
    assert "\n" not in str(caught.value)
    assert not list((tmp_path / "cache" / "hf").iterdir())  # the temporary folder is gone


def test_the_cli_prints_the_folder_for_vllm_serve_and_names_a_bad_reference(tmp_path):
    import subprocess
    import sys

    (tmp_path / "config.json").write_text("{}")
    command = [sys.executable, "-m", "synthir.cli", "hf-folder"]
    done = subprocess.run([*command, str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == f"{tmp_path.resolve()}\n"
    for bad, message in [("./no-such-model", "no such file or folder"), ("pkg:../x/y", r"'\.\.' is not a package")]:
        done = subprocess.run([*command, bad], capture_output=True, text=True)
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert re.search(message, done.stderr.splitlines()[-1]) and done.stderr.startswith("error: ")


def test_a_conversion_error_names_its_root_cause_and_the_torchvision_fix(tiny_gguf, tmp_path, monkeypatch):
    def broken_torchvision(gguf_path, out):
        try:
            raise RuntimeError("operator torchvision::nms does not exist")
        except RuntimeError as error:
            raise ModuleNotFoundError("Could not import module 'Qwen2ForCausalLM'.") from error

    monkeypatch.setattr(hf_export, "_convert", broken_torchvision)
    with pytest.raises(LLMError) as caught:
        hf_folder(str(tiny_gguf[0]), cache_root=tmp_path)
    message = str(caught.value)
    assert "Qwen2ForCausalLM" in message and "RuntimeError: operator torchvision::nms does not exist" in message
    assert "pip uninstall -y torchvision torchaudio torchcodec" in message
