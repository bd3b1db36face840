"""transformers backend: batched `generate` with left padding, chat templates, CPU or GPU (bf16 where it runs).

Sampling is reproducible per sample: each output row draws its Gumbel noise from its own generator seeded with
`sampling.seed + j` (sample j of a request), so a sample does not depend on the batch it ran in. Only synthir's
`Sampling` decides decoding: the model's own generation config (a repetition penalty, top-k, beams...) is dropped
at load, keeping its special token ids.
"""

from __future__ import annotations

import inspect
import itertools
import logging
from collections.abc import Sequence
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from ..devices import DTYPES, check_device, gpu_runs_bfloat16
from ..models import resolve
from .base import Completion, LLMError, Prompt, Request, Usage, generate_isolating

log = logging.getLogger(__name__)

_SPECIAL_TOKEN_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
"""What the backend keeps of a model's generation config: which tokens start, pad and end a text."""

_YES_NO = {"yes": ("yes", "Yes", "YES", " yes", " Yes", " YES"), "no": ("no", "No", "NO", " no", " No", " NO")}


class _SeededSampler(LogitsProcessor):
    """Temperature, top-p, then per-row Gumbel noise: greedy search on the result samples each row from its
    own seeded stream."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device: torch.device) -> None:
        self.temperature = temperature
        self.top_p = top_p
        self.generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float() / self.temperature
        if self.top_p < 1.0:
            ordered, order = scores.sort(dim=-1, descending=True)
            probs = ordered.softmax(dim=-1)
            outside = probs.cumsum(dim=-1) - probs > self.top_p  # keeps the smallest set reaching top_p
            ordered = ordered.masked_fill(outside, -torch.inf)
            scores = torch.full_like(scores, -torch.inf).scatter(-1, order, ordered)
        exp = torch.empty_like(scores)
        for row, generator in enumerate(self.generators):
            exp[row].exponential_(generator=generator)
        return scores - exp.log()


class _StopStrings(StoppingCriteria):
    """Stops a row once its generated text contains a stop string (checks the last `window` tokens)."""

    def __init__(self, stop: Sequence[str], tokenizer: Any, prompt_len: int, window: int = 32) -> None:
        self.stop, self.tokenizer, self.prompt_len, self.window = list(stop), tokenizer, prompt_len, window

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        start = max(self.prompt_len, input_ids.shape[1] - self.window)
        tails = self.tokenizer.batch_decode(input_ids[:, start:], skip_special_tokens=True)
        return torch.tensor([any(s in tail for s in self.stop) for tail in tails], device=input_ids.device)


class HFBackend:
    """`AutoModelForCausalLM` + tokenizer from a model reference (hub id, local path or pkg:)."""

    kind = "hf"
    """Backend kind; local, so no server in its identity (see `backend_identity`)."""

    def __init__(
        self,
        model: str,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 8,
        model_id: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        self.device = _device(device)
        dtype = _dtype(dtype, self.device)
        path = resolve(model)
        self.model_id = model_id or model
        self.scoring_usage = Usage()
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(  # straight to the device, not via host memory
            path, dtype=DTYPES[dtype], device_map=self.device, trust_remote_code=trust_remote_code
        )
        self.model.eval()
        self.model.generation_config = _token_ids_only(self.model.generation_config)
        forward = inspect.signature(self.model.forward).parameters
        self._takes_position_ids = "position_ids" in forward
        self._takes_logits_to_keep = "logits_to_keep" in forward
        self._yes_no: dict[str, list[int]] | None = None

    def __repr__(self) -> str:
        return f"HFBackend(model_id={self.model_id!r}, device={str(self.device)!r})"

    def generate(self, requests: list[Request]) -> list[Completion]:
        results: list[Completion | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: _group_key(requests[i]))
        for _, members in itertools.groupby(order, key=lambda i: _group_key(requests[i])):
            members = list(members)
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                done = generate_isolating([requests[i] for i in chunk], self._generate_batch, "hf backend")
                for i, completion in zip(chunk, done, strict=True):
                    results[i] = completion
        return results  # type: ignore[return-value]

    def score_yes_no(self, prompts: Sequence[Prompt]) -> list[float]:
        ids = self._yes_no_ids()
        scores: list[float] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = self._encode(prompts[start : start + self.batch_size])
            self.scoring_usage.tokens_in += int(batch["attention_mask"].sum())
            logprobs = self._last_logits(batch).float().log_softmax(dim=-1)
            yes = logprobs[:, ids["yes"]].logsumexp(dim=-1)
            no = logprobs[:, ids["no"]].logsumexp(dim=-1)
            scores.extend((yes - no).tolist())
        return scores

    def _last_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each row's next-token logits from one forward pass without a KV cache, computing the vocabulary
        projection for the last position alone (all positions at batch 16 x 1,024 tokens x 152k vocabulary are
        ~5 GB in bfloat16). Position ids count from each row's first real token, as `generate` counts them, so a
        left-padded row scores as it does alone (models with absolute positions, e.g. GPT-2, depend on it)."""
        inputs: dict[str, Any] = {**batch, "use_cache": False}
        if self._takes_position_ids:
            inputs["position_ids"] = _position_ids(batch["attention_mask"])
        if self._takes_logits_to_keep:
            inputs["logits_to_keep"] = 1
        with torch.inference_mode():
            return self.model(**inputs).logits[:, -1, :]

    def _render(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        if not self.tokenizer.chat_template:
            raise LLMError(f"hf backend: {self.model_id} has no chat template; send a plain prompt instead")
        return self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)

    def _encode(self, prompts: Sequence[Prompt]) -> dict[str, torch.Tensor]:
        """Left-padded batch; a rendered chat template already holds its special tokens."""
        features = [
            self.tokenizer(self._render(p), add_special_tokens=isinstance(p, str), return_attention_mask=True)
            for p in prompts
        ]
        encoded = self.tokenizer.pad(
            [{"input_ids": f["input_ids"], "attention_mask": f["attention_mask"]} for f in features],
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in encoded.items()}

    def _generate_batch(self, requests: list[Request]) -> list[Completion]:
        first = requests[0]
        s, n = first.sampling, first.n
        rows = n if s.temperature > 0 else 1  # greedy samples are all the same
        batch = self._encode([r.input for r in requests])
        tokens_in = batch["attention_mask"].sum(dim=1).tolist()
        if rows > 1:  # one row per sample (greedy search refuses num_return_sequences)
            batch = {k: v.repeat_interleave(rows, dim=0) for k, v in batch.items()}
        options: dict[str, Any] = {
            "max_new_tokens": s.max_tokens,
            "do_sample": False,
            "return_dict_in_generate": True,
            "output_logits": bool(s.logprobs),
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if s.stop:
            prompt_len = batch["input_ids"].shape[1]
            options["stopping_criteria"] = StoppingCriteriaList([_StopStrings(s.stop, self.tokenizer, prompt_len)])
        if s.temperature > 0:
            seeds = [r.sampling.seed + j for r in requests for j in range(n)]
            options["logits_processor"] = LogitsProcessorList(
                [_SeededSampler(seeds, s.temperature, s.top_p, self.device)]
            )
        with torch.inference_mode():
            out = self.model.generate(**batch, **options)
        prompt_len = batch["input_ids"].shape[1]
        generated = out.sequences[:, prompt_len:].tolist()
        first_logprobs = out.logits[0].float().log_softmax(dim=-1) if s.logprobs else None
        completions = []
        for r_index in range(len(requests)):
            texts, counts, tops = [], [], []
            for j in range(n):
                row = r_index * rows + (j if rows > 1 else 0)
                text, count = self._decode(generated[row], s.stop)
                texts.append(text)
                counts.append(count)
                if first_logprobs is not None:
                    tops.append(self._top(first_logprobs[row], s.logprobs))
            completions.append(
                Completion(
                    texts=texts,
                    tokens_in=int(tokens_in[r_index]),
                    tokens_out=sum(counts),
                    logprobs=tops if s.logprobs else None,
                    tokens_out_each=counts,
                )
            )
        return completions

    def _decode(self, ids: list[int], stop: Sequence[str]) -> tuple[str, int]:
        """Text up to the first end-of-sequence (and before the first stop string), and the tokens generated."""
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        end = next((i for i, t in enumerate(ids) if t in eos_ids), None)
        count = len(ids) if end is None else end + 1
        if end is None:  # rows that finished early are padded
            pad = self.tokenizer.pad_token_id
            while count and ids[count - 1] == pad:
                count -= 1
        text = self.tokenizer.decode(ids[: count if end is None else end], skip_special_tokens=True)
        cuts = [text.find(s) for s in stop if s in text]
        return (text[: min(cuts)] if cuts else text), count

    def _top(self, logprobs: torch.Tensor, k: int) -> dict[str, float]:
        values, ids = logprobs.topk(k)
        top: dict[str, float] = {}
        for value, token in zip(values.tolist(), ids.tolist(), strict=True):
            top.setdefault(self.tokenizer.decode([token]), value)
        return top

    def _yes_no_ids(self) -> dict[str, list[int]]:
        if self._yes_no is None:
            found: dict[str, list[int]] = {}
            for word, variants in _YES_NO.items():
                ids = {self.tokenizer.encode(v, add_special_tokens=False)[:1][0] for v in variants if v.strip()}
                found[word] = sorted(i for i in ids if self.tokenizer.decode([i]).strip().lower() == word)
                if not found[word]:
                    raise LLMError(f"hf backend: no single token for '{word}' in the vocabulary of {self.model_id}")
            self._yes_no = found
        return self._yes_no


def _device(name: str) -> torch.device:
    """`auto` (cuda when torch sees a GPU), cpu, cuda or cuda:N; refused here when this machine lacks it."""
    wrong = f"hf backend: options.device must be auto, cpu, cuda or cuda:N, got {name!r:.80}"
    if not isinstance(name, str):
        raise LLMError(wrong)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LLMError(wrong) from None
    if device.type not in ("cpu", "cuda"):
        raise LLMError(wrong)
    check_device(device.type, "float32", "hf backend: options.device")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise LLMError(f"hf backend: options.device is {name}, but torch sees {torch.cuda.device_count()} GPU(s)")
    return device


def _dtype(name: str, device: torch.device) -> str:
    """`auto`: float32 on a CPU (the reference arithmetic), bfloat16 on a GPU that runs it natively, else float16."""
    if name == "auto":
        name = "float32" if device.type == "cpu" else "bfloat16" if gpu_runs_bfloat16() else "float16"
    if not isinstance(name, str) or name not in DTYPES:
        raise LLMError(f"hf backend: options.dtype must be auto, {', '.join(DTYPES)}, got {name!r:.80}")
    check_device(device.type, name, "hf backend: options.device", "hf backend: options.dtype")
    return name


def _token_ids_only(config: GenerationConfig) -> GenerationConfig:
    """A generation config holding only the model's special token ids: `generate` fills every setting left unset
    from the model's config, so a shipped repetition penalty, top-k or beam count would otherwise change texts."""
    return GenerationConfig(**{key: getattr(config, key, None) for key in _SPECIAL_TOKEN_KEYS})


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2... from each row's first real token (padding gets 0), as `generate` derives them."""
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)


def _group_key(request: Request) -> tuple:
    s = request.sampling
    return (request.messages is not None, request.n, s.temperature, s.top_p, s.max_tokens, s.stop, s.logprobs)
