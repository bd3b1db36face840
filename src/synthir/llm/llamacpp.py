"""GGUF models on CPU (or GPU offload) through `xllamacpp`, llama.cpp's server bindings (prebuilt wheels).

The server runs in-process: `handle_chat_completions` (chat template from the GGUF) for messages,
`handle_completions` for prompts. llama.cpp serves one sample per call, so sample j of a request is drawn with
seed `sampling.seed + j`; requests run `n_parallel` at a time (llama.cpp batches them in its slots).

llama.cpp keeps each slot's last prompt in its KV cache and evaluates only what a new prompt does not share with
it (`cache_prompt`, on by default), so requests with a common prefix (a template's system turn and few-shot
examples) pay for that prefix once; `tokens_cached` reports how many prompt tokens it reused. `draft_model` turns
on speculative decoding with a smaller model of the same tokenizer (the bundled Qwen2.5-Coder-0.5B for the 1.5B):
the big model checks `draft_max` drafted tokens per step, so the text is the big model's own.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import ModelRefError
from ..models import resolve
from .base import Completion, LLMError, Prompt, Request, Usage, score_with_logprobs

log = logging.getLogger(__name__)

_TIMINGS = ("prompt_n", "cache_n", "prompt_ms", "predicted_n", "predicted_ms", "draft_n", "draft_n_accepted")


class LlamaCppBackend:
    kind = "llamacpp"
    """Backend kind; local, so no server in its identity (see `backend_identity`)."""

    def __init__(
        self,
        model: str,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        n_parallel: int = 1,
        n_batch: int = 512,
        model_id: str | None = None,
        verbosity: int = 0,
        draft_model: str | None = None,
        draft_max: int = 16,
        draft_min: int = 0,
        draft_p_min: float = 0.75,
    ) -> None:
        try:
            import xllamacpp
        except ImportError:
            raise LLMError("llamacpp backend needs the xllamacpp package: pip install xllamacpp") from None
        path = resolve(model)
        if not os.path.isfile(path):
            raise LLMError(f"llamacpp backend: '{model}' does not resolve to a GGUF file ({path})")
        params = xllamacpp.CommonParams()
        params.model.path = path
        params.n_ctx = n_ctx * n_parallel  # llama.cpp splits the context between its parallel slots
        params.n_parallel = n_parallel
        params.n_batch = n_batch
        params.n_gpu_layers = n_gpu_layers
        params.warmup = False
        params.verbosity = verbosity
        threads = n_threads or max(1, min(os.cpu_count() or 1, 8))
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        if draft_model is not None:
            _add_draft(xllamacpp, params, draft_model, draft_max, draft_min, draft_p_min, threads)
        self.model_id = model_id or model
        self.n_parallel = n_parallel
        self.draft_model = draft_model
        self.scoring_usage = Usage()
        self.timings = dict.fromkeys(_TIMINGS, 0.0)
        """llama.cpp's own counters summed over calls: prompt tokens evaluated and cached, their milliseconds,
        generated tokens and theirs, and (speculative decoding) tokens drafted and accepted."""
        self._timings_lock = threading.Lock()
        self._server = xllamacpp.Server(params)

    def __repr__(self) -> str:
        return f"LlamaCppBackend(model_id={self.model_id!r}, n_parallel={self.n_parallel})"

    def generate(self, requests: list[Request]) -> list[Completion]:
        if self.n_parallel == 1:
            return [self._one(r) for r in requests]
        with ThreadPoolExecutor(self.n_parallel) as pool:
            return list(pool.map(self._one, requests))

    def score_yes_no(self, prompts: Sequence[Prompt]) -> list[float]:
        return score_with_logprobs(self, prompts, "llamacpp backend")

    def _one(self, request: Request) -> Completion:
        texts, counts, tops, tokens_in, cached = [], [], [], 0, 0
        for j in range(request.n):
            try:
                data = self._call(request, j)
                choice = data["choices"][0]
                text = choice["message"]["content"] if request.messages is not None else choice["text"]
            except (KeyError, IndexError, TypeError, RuntimeError, ValueError) as exc:
                log.warning("llamacpp backend: request failed: %s", exc)
                return Completion(texts, tokens_in, sum(counts), failed=True, error=f"llamacpp: {exc}")
            usage = data.get("usage") or {}
            tokens_in = int(usage.get("prompt_tokens") or 0)
            cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
            self._add_timings(data.get("timings") or {})
            texts.append(text or "")
            counts.append(int(usage.get("completion_tokens") or 0))
            if request.sampling.logprobs:
                tops.append(_first_token_logprobs(choice.get("logprobs")))
        return Completion(
            texts=texts,
            tokens_in=tokens_in,
            tokens_out=sum(counts),
            logprobs=tops if request.sampling.logprobs else None,
            tokens_out_each=counts,
            tokens_cached=cached,
        )

    def _add_timings(self, timings: dict[str, Any]) -> None:
        with self._timings_lock:
            for name in _TIMINGS:
                self.timings[name] += float(timings.get(name) or 0)

    def _call(self, request: Request, sample: int) -> dict[str, Any]:
        s = request.sampling
        body: dict[str, Any] = {
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
            "seed": s.seed + sample,
        }
        if s.stop:
            body["stop"] = list(s.stop)
        if s.logprobs:
            body.update(logprobs=True, top_logprobs=s.logprobs, n_probs=s.logprobs)
        if request.messages is not None:
            data = self._server.handle_chat_completions({**body, "messages": request.messages})
        else:
            data = self._server.handle_completions({**body, "prompt": request.prompt})
        if isinstance(data, dict) and "error" in data:
            error = data["error"]
            raise ValueError(error.get("message", error) if isinstance(error, dict) else error)
        return data


def _add_draft(xllamacpp: Any, params: Any, model: str, n_max: int, n_min: int, p_min: float, threads: int) -> None:
    """Speculative decoding: `model` drafts up to `n_max` tokens (kept while its own probability is ≥ `p_min`)."""
    try:
        path = resolve(model)
    except ModelRefError as error:
        raise LLMError(f"llamacpp backend: draft_model: {error}") from None
    if not os.path.isfile(path):
        raise LLMError(f"llamacpp backend: draft_model '{model}' does not resolve to a GGUF file ({path})")
    spec = params.speculative
    spec.types = [xllamacpp.common_speculative_type.COMMON_SPECULATIVE_TYPE_DRAFT_SIMPLE]
    draft = spec.draft
    draft.mparams.path = path
    draft.n_max, draft.n_min, draft.p_min = n_max, n_min, p_min
    draft.cpuparams.n_threads = threads
    draft.cpuparams_batch.n_threads = threads


def _first_token_logprobs(block: dict[str, Any] | None) -> dict[str, float]:
    if not block or not block.get("content"):
        return {}
    first = block["content"][0]
    top = {t["token"]: float(t["logprob"]) for t in first.get("top_logprobs") or []}
    top.setdefault(first["token"], float(first["logprob"]))
    return top
