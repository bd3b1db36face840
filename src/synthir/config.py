"""Typed params.yaml: one pydantic model per block, errors that name the key.

Stage scripts call `load_params()`; library code receives plain values and never reads params.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError, ModelRefError
from .models import check_reference


class Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetParams(Block):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    path: str | None = None
    """A local BEIR folder: makes `name` a custom dataset instead of a registry entry."""


class SampleParams(Block):
    fraction: float = Field(gt=0, le=1)
    seed: int = 13


class EncoderParams(Block):
    """A sentence-transformers model and how to feed it."""

    base_model: str = Field(min_length=1)
    query_prefix: str = ""
    passage_prefix: str = ""
    max_seq_length: int | None = Field(default=None, gt=0)

    @field_validator("base_model")
    @classmethod
    def _model_exists(cls, value: str) -> str:
        try:
            check_reference(value)
        except ModelRefError as error:
            raise ValueError(str(error)) from None
        return value


class Bm25Params(Block):
    k1: float = Field(default=1.5, gt=0)
    b: float = Field(default=0.75, ge=0, le=1)
    stemmer: str | None = "english"
    stopwords: str | None = "en"


class EvaluateParams(Block):
    split: str = "test"
    batch_size: int = Field(default=64, gt=0)
    depth: int = Field(default=100, ge=100, description="hits kept per query (recall@100 needs 100)")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    search: Literal["torch", "faiss"] = "torch"
    bm25: Bm25Params = Bm25Params()


class Params(Block):
    dataset: DatasetParams
    sample: SampleParams
    train: EncoderParams
    evaluate: EvaluateParams = EvaluateParams()


def format_validation_error(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "missing":
            message = "missing (required)"
        elif "input" in item and item["type"] != "value_error":
            message += f" (got {item['input']!r})"
        lines.append(f"{source}: {key}: {message}")
    return "\n".join(lines)


def parse_params(data: object, source: str = "params.yaml") -> Params:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of blocks, got {type(data).__name__}")
    try:
        return Params.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {error.problem}") from None
    return parse_params(data, str(path))
