"""Test doubles: a scripted LLM that answers each synthesis prompt in a recognisable, deterministic way."""

from __future__ import annotations

from collections.abc import Sequence

from synthir.llm.base import Completion, Prompt, Request


class ScriptedLLM:
    """A fake backend keyed on the system prompt. doc2query answers `Query: "what about <first words>"`,
    passages are 15-word sentences; `score_yes_no` says yes (+2) when the passage contains RELEVANT.
    Every request it receives is recorded."""

    model_id = "scripted/llm"
    kind = "scripted"

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.scored: list[Prompt] = []

    def generate(self, requests: list[Request]) -> list[Completion]:
        self.requests += requests
        return [self._answer(r) for r in requests]

    def _answer(self, request: Request) -> Completion:
        system, user = request.messages[0]["content"], request.messages[-1]["content"]
        subject = " ".join(user.split()[1:4])
        texts = []
        for j in range(request.n):
            seed = request.sampling.seed + j
            if "write search queries" in system:
                texts.append(f'Query: "what about {subject} variant {seed % 3}"')
            elif "expanded version" in system:
                texts.append(f"Expansion: key terms {subject} and mechanisms")
            else:
                texts.append(f"Passage: {subject} " + " ".join(["filler"] * 12) + f" {seed}.")
        return Completion(texts, tokens_in=len(user.split()), tokens_out=5 * request.n)

    def score_yes_no(self, prompts: Sequence[Prompt]) -> list[float]:
        self.scored += prompts
        return [2.0 if "RELEVANT" in p[-1]["content"] else -2.0 for p in prompts]
