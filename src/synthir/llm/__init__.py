"""LLM layer: one backend interface (vllm, hf, llamacpp, openai), a completion cache in front of it."""

from .base import (
    Backend,
    Completion,
    LLMError,
    Prompt,
    Request,
    Sampling,
    UnsupportedError,
    make_backend,
    sample_seed,
    yes_no_margin,
)
from .cache import CachedBackend, CacheStats, CompletionCache, cache_key, default_cache_path

__all__ = [
    "Backend",
    "CacheStats",
    "CachedBackend",
    "Completion",
    "CompletionCache",
    "LLMError",
    "Prompt",
    "Request",
    "Sampling",
    "UnsupportedError",
    "cache_key",
    "default_cache_path",
    "make_backend",
    "sample_seed",
    "yes_no_margin",
]
