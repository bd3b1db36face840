"""vLLM offline batch inference: `LLM.generate` for prompts, `LLM.chat` for messages (GPU only).

One `SamplingParams` per request (n, temperature, top_p, max_tokens, stop, seed, logprobs); prefix caching is on,
so the samples and few-shot prefixes that requests share are computed once. vllm is imported only here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ..models import resolve
from .base import Completion, LLMError, Prompt, Request, Usage, generate_isolating, score_with_logprobs

log = logging.getLogger(__name__)


class VLLMBackend:
    kind = "vllm"
    """Backend kind; local, so no server in its identity (see `backend_identity`)."""

    def __init__(
        self,
        model: str,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        seed: int = 0,
        max_model_len: int | None = None,
        dtype: str = "auto",
        model_id: str | None = None,
        **llm_options: Any,
    ) -> None:
        try:
            import vllm
        except ImportError:
            raise LLMError("vllm backend needs vllm (GPU): pip install -r requirements-gpu.txt") from None
        self._vllm = vllm
        self.model_id = model_id or model
        self.scoring_usage = Usage()
        options = dict(llm_options)
        if max_model_len is not None:
            options["max_model_len"] = max_model_len
        self.llm = vllm.LLM(
            model=resolve(model),
            tensor_parallel_size=tensor_parallel_size,
            enable_prefix_caching=True,
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
            dtype=dtype,
            **options,
        )

    def __repr__(self) -> str:
        return f"VLLMBackend(model_id={self.model_id!r})"

    def generate(self, requests: list[Request]) -> list[Completion]:
        results: list[Completion | None] = [None] * len(requests)
        for chat in (False, True):
            members = [i for i, r in enumerate(requests) if (r.messages is not None) == chat]
            if members:
                done = generate_isolating([requests[i] for i in members], self._run, "vllm backend")
                for i, completion in zip(members, done, strict=True):
                    results[i] = completion
        return results  # type: ignore[return-value]

    def score_yes_no(self, prompts: Sequence[Prompt]) -> list[float]:
        return score_with_logprobs(self, prompts, "vllm backend")

    def _params(self, request: Request) -> Any:
        s = request.sampling
        return self._vllm.SamplingParams(
            n=request.n,
            temperature=s.temperature,
            top_p=s.top_p,
            max_tokens=s.max_tokens,
            stop=list(s.stop) or None,
            seed=s.seed,
            logprobs=s.logprobs or None,
        )

    def _run(self, requests: list[Request]) -> list[Completion]:
        params = [self._params(r) for r in requests]
        if requests[0].messages is not None:
            outputs = self.llm.chat([r.messages for r in requests], params, use_tqdm=False)
        else:
            outputs = self.llm.generate([r.prompt for r in requests], params, use_tqdm=False)
        return [_completion(r, out) for r, out in zip(requests, outputs, strict=True)]


def _completion(request: Request, output: Any) -> Completion:
    samples = sorted(output.outputs, key=lambda o: o.index)
    counts = [len(o.token_ids) for o in samples]
    logprobs = [_first_token_logprobs(o.logprobs) for o in samples] if request.sampling.logprobs else None
    return Completion(
        texts=[o.text for o in samples],
        tokens_in=len(output.prompt_token_ids or []),
        tokens_out=sum(counts),
        logprobs=logprobs,
        tokens_out_each=counts,
        tokens_cached=int(getattr(output, "num_cached_tokens", None) or 0),  # vLLM's prefix cache
    )


def _first_token_logprobs(positions: list[dict[int, Any]] | None) -> dict[str, float]:
    """vLLM gives, per generated position, token id -> Logprob(logprob, rank, decoded_token)."""
    if not positions:
        return {}
    top: dict[str, float] = {}
    for token_id, entry in sorted(positions[0].items(), key=lambda item: -item[1].logprob):
        top.setdefault(entry.decoded_token if entry.decoded_token is not None else str(token_id), entry.logprob)
    return top
