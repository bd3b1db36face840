"""Test doubles for the LLM layer (importable by child processes as `tests.llm.fakes`)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from synthir.llm.base import Completion, Prompt, Request


def input_text(request: Request) -> str:
    return request.prompt if request.prompt is not None else json.dumps(request.messages)


class ScriptedBackend:
    """A fake backend: sample j of a request is `<input>#<seed + j>`; it records every batch it is sent.

    `fail` maps an input to how many times it fails before it succeeds; `delay` sleeps per batch.
    """

    def __init__(self, model_id: str = "fake/model", fail: dict[str, int] | None = None, delay: float = 0.0) -> None:
        self.model_id = model_id
        self.fail = dict(fail or {})
        self.delay = delay
        self.batches: list[list[Request]] = []
        self.scored: list[Prompt] = []

    @property
    def requests(self) -> list[Request]:
        return [r for batch in self.batches for r in batch]

    def generate(self, requests: list[Request]) -> list[Completion]:
        self.batches.append(list(requests))
        time.sleep(self.delay)
        results = []
        for request in requests:
            text = input_text(request)
            if self.fail.get(text, 0) > 0:
                self.fail[text] -= 1
                results.append(Completion.failure("scripted failure"))
                continue
            texts = [f"{text}#{request.sampling.seed + j}" for j in range(request.n)]
            logprobs = [{"yes": -0.5, "no": -1.5}] * request.n if request.sampling.logprobs else None
            results.append(
                Completion(
                    texts, tokens_in=len(text), tokens_out=2 * request.n, logprobs=logprobs, tokens_out_each=None
                )
            )
        return results

    def score_yes_no(self, prompts: Sequence[Prompt]) -> list[float]:
        self.scored.extend(prompts)
        return [float(len(p)) for p in prompts]
