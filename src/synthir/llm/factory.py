"""`make_backend`: a backend by its name (vllm, hf, llamacpp, openai), its module and heavy runtime imported only
when one is made."""

from __future__ import annotations

import importlib
from typing import Any

from .base import Backend, LLMError

BACKENDS = {
    "vllm": ("synthir.llm.vllm", "VLLMBackend"),
    "hf": ("synthir.llm.hf", "HFBackend"),
    "llamacpp": ("synthir.llm.llamacpp", "LlamaCppBackend"),
    "openai": ("synthir.llm.openai_compat", "OpenAICompatBackend"),
}


def make_backend(kind: str, model: str, **options: Any) -> Backend:
    """Build a backend by name; its module (and heavy runtime such as vllm) is imported only now."""
    if kind not in BACKENDS:
        raise LLMError(f"unknown LLM backend '{kind}'; choose one of {', '.join(sorted(BACKENDS))}")
    module_name, class_name = BACKENDS[kind]
    backend_class = getattr(importlib.import_module(module_name), class_name)
    return backend_class(model, **options)
