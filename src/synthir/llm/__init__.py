"""LLM layer: one backend interface (vllm, hf, llamacpp, openai), a completion cache in front of it."""

from .base import (
    Backend,
    Completion,
    LLMError,
    Prompt,
    Request,
    Sampling,
    UnsupportedError,
    backend_identity,
    make_backend,
    sample_seed,
    yes_no_margin,
)
from .cache import CachedBackend, CacheError, CacheStats, CompletionCache, cache_key, default_cache_path, open_backend

__all__ = [
    "Backend",
    "CacheError",
    "CacheStats",
    "CachedBackend",
    "Completion",
    "CompletionCache",
    "LLMError",
    "Prompt",
    "Request",
    "Sampling",
    "UnsupportedError",
    "backend_identity",
    "cache_key",
    "default_cache_path",
    "make_backend",
    "open_backend",
    "sample_seed",
    "yes_no_margin",
]
