"""A model users can publish: sentence-transformers' own model card, filled with what synthir knows.

Training fills the card's metadata (base model, language, license, training data, loss, every hyperparameter) and
saves the query/passage prefixes as the model's prompts, so `encode_query` / `encode_document` apply them. The
`publish` stage adds the pipeline's evaluation scores (YAML `model-index` and a table) to a copy of the evaluated
model. No local path reaches a card: a base model is named by its Hub id, or not at all.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from ..errors import DataError, excerpt
from ..models import PACKAGE_PREFIX, hub_id

CARD = "README.md"
_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n", re.DOTALL)


def read_card(folder: Path) -> tuple[dict, str]:
    """A card's YAML metadata and its markdown body ({} and the text when it has no front matter)."""
    path = Path(folder) / CARD
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    match = _FRONT_MATTER.match(text)
    if not match:
        return {}, text
    return yaml.safe_load(match.group(1)) or {}, text[match.end() :]


def write_card(folder: Path, metadata: dict, body: str) -> None:
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True, width=1000)
    (Path(folder) / CARD).write_text(f"---\n{front}---\n{body}", encoding="utf-8")


def base_model_id(ref: str, resolved: str) -> str | None:
    """The Hub id of a base model: a bundled model's (`models.hub_id`), what a local folder's own card names (a
    synthir model: the base model of its training), or a hub id as written; never a local path. `resolved`:
    where the model was loaded from, which tells a local folder from a hub id of the same shape."""
    if ref.startswith(PACKAGE_PREFIX):
        return hub_id(ref)
    if Path(resolved).exists():
        metadata = read_card(Path(resolved))[0] if Path(resolved).is_dir() else {}
        base = metadata.get("base_model")
        return base if isinstance(base, str) and not Path(base).is_absolute() else None
    return hub_id(ref)


def set_prompts(model, query_prefix: str, passage_prefix: str) -> None:
    """The prefixes as the model's saved prompts: `encode_query` applies "query", `encode_document` "document"."""
    prompts = {"query": query_prefix, "document": passage_prefix}
    model.prompts = {name: text for name, text in prompts.items() if text}
    model.default_prompt_name = None


def describe_base(model, ref: str, resolved: str) -> None:
    """The card's base model (its Hub id), language and license (the base model's own), looked up offline.
    `resolved`: where the base model was loaded from."""
    card = model.model_card_data
    card.local_files_only = True  # nothing is looked up online; the card says what synthir knows
    card.base_model = base_model_id(ref, resolved)
    base_metadata = read_card(Path(resolved))[0] if Path(resolved).is_dir() else {}
    card.language = base_metadata.get("language") or card.language
    card.license = card.license or base_metadata.get("license")
    model._model_card_text = None  # sentence-transformers would re-save the loaded model's card


def describe_adaptation(model, ref: str, resolved: str) -> None:
    """The card of a corpus-adapted encoder (the adapt stage): the base it was adapted from, so the card of a
    model trained from it names that base too."""
    describe_base(model, ref, resolved)
    model.model_card_data.add_tags(["synthir", "tsdae"])


def describe_training(
    model, settings: dict, resolved: str, sources: dict[str, int], dataset: str | None, defaults: dict
) -> None:
    """Fill the card sentence-transformers writes on `model.save`: base model, language and license (the base
    model's), the training data by source, the loss, and the run's `settings` (FitParams fields; those differing
    from `defaults` listed first). `resolved`: where the base model was loaded from."""
    describe_base(model, settings["base_model"], resolved)
    card = model.model_card_data
    card.add_tags(["synthir", "dense-retrieval", f"loss:{settings['loss']}"])
    card.task_name = "dense retrieval: queries through encode_query, passages through encode_document"
    card.ir_model = True  # the usage snippet encodes a query and documents
    settings = {**settings, "base_model": card.base_model or "(a local model)"}  # never a path or pkg: reference
    card.all_hyperparameters = settings
    card.non_default_hyperparameters = {k: v for k, v in settings.items() if defaults.get(k) != v}
    card.train_datasets = [_dataset_entry(sources, dataset, settings)]


def _dataset_entry(sources: dict[str, int], dataset: str | None, settings: dict) -> dict[str, Any]:
    by_source = ", ".join(f"{source}: {count:,}" for source, count in sorted(sources.items()))
    name = f"{dataset or 'the corpus'}: labeled and synthetic queries ({by_source})"
    loss_settings = {"tau": settings["tau"], "num_negatives": settings["num_negatives"]}
    if settings["loss"] == "listwise":
        loss_settings["teacher_temperature"] = settings["teacher_temperature"]
    if settings.get("contrastive_weight"):
        loss_settings["contrastive_weight"] = settings["contrastive_weight"]
    config = json.dumps(loss_settings, indent=4)
    return {
        "name": name,
        "size": sum(sources.values()),
        "columns": ["query", "positives", "negatives"],
        "loss": {
            "fullname": f"synthir.training.losses.{settings['loss']}",
            "config_code": f"  ```json\n  {config}\n  ```",
        },
    }


SCORES_BYTES = 1 << 20
"""The largest metrics file the publish stage reads (the evaluate stage writes about 1 kB)."""


def read_scores(path: Path) -> tuple[dict[str, float], str]:
    """The evaluate stage's metrics file: its scores (metric -> number in [0, 1]) and its split. Anything else
    (not JSON, another shape, NaN, a split that is not a plain name) is a DataError naming the file and key."""
    from ..beir import check_split_name
    from ..fileio import read_json
    from ..scores import METRIC_NAME, check_score

    evaluated = read_json(path, "the evaluate stage's metrics", SCORES_BYTES)
    if not isinstance(evaluated, dict):
        raise DataError(f"{path}: expected the JSON object the evaluate stage writes, got {type(evaluated).__name__}")
    split = evaluated.get("split", "test")
    try:
        check_split_name(split if isinstance(split, str) else "")
    except ValueError as error:
        raise DataError(f"{path}: split: {error} (got {excerpt(split)})") from None
    scores = {
        key: check_score(value, f"{path}: {key}") for key, value in evaluated.items() if METRIC_NAME.fullmatch(key)
    }
    return scores, split


_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", **{c: "\\" + c for c in "\\`*_[]|!~"}}


def markdown_text(text: str, width: int = 200) -> str:
    """`text` as plain inline text in a card: one line (control characters and line breaks become spaces), at
    most `width` characters, HTML and Markdown syntax escaped."""
    text = _UNSAFE.sub(" ", text[:width]).strip()
    return "".join(_ESCAPES.get(c, c) for c in text)


def add_scores(folder: Path, scores: dict[str, float], dataset: str, split: str, name: str) -> None:
    """The pipeline's evaluation scores in the card: `model-index` metadata (what the Hub shows) and a table.
    Every string is copied as one line into the metadata and escaped in the markdown."""
    metadata, body = read_card(folder)
    dataset, split, name = (_UNSAFE.sub(" ", text).strip() for text in (dataset, split, name))
    metrics = [{"type": metric, "value": value, "name": metric} for metric, value in scores.items()]
    metadata["model-index"] = [
        {
            "name": name,
            "results": [
                {
                    "task": {"type": "retrieval", "name": "Retrieval"},
                    "dataset": {"type": f"beir/{dataset}", "name": f"BEIR {dataset}", "split": split},
                    "metrics": metrics,
                }
            ],
        }
    ]
    table = "\n".join(
        [
            f"## Evaluation: BEIR {markdown_text(dataset)} ({markdown_text(split)} split)",
            "",
            "Scored by synthir's evaluate stage (pytrec_eval, trec_eval semantics), exact search over the corpus.",
            "",
            "| Metric | Value |",
            "|:--|--:|",
            *(f"| {markdown_text(metric)} | {value:.4f} |" for metric, value in scores.items()),
            "",
        ]
    )
    anchor = body.find("## Training Details")
    body = body[:anchor] + table + "\n" + body[anchor:] if anchor >= 0 else body + "\n" + table
    write_card(folder, metadata, body)


PLACEHOLDER_ID = "sentence_transformers_model_id"
"""What sentence-transformers' usage snippet loads when the card knows no model id."""


def publish(
    model: Path, output: Path, scores: dict[str, float], dataset: str, split: str, model_id: str | None
) -> None:
    """A copy of the model folder whose card carries the scores (when there are any: a corpus without test
    queries has none) and, if given, the Hub id in its usage snippet. Written whole or not at all."""
    import shutil

    from ..fileio import atomic_dir

    with atomic_dir(output) as folder:
        shutil.copytree(model, folder, dirs_exist_ok=True)
        metadata, body = read_card(folder)
        if model_id:
            write_card(folder, metadata, body.replace(PLACEHOLDER_ID, model_id))
        if scores:
            add_scores(folder, scores, dataset, split, model_id or f"synthir-{dataset}-retriever")


def push_to_hub(folder: Path, model_id: str) -> str:
    """Upload the published folder to the Hub repository `model_id` (created if missing, private). The token
    comes from the environment (HF_TOKEN) or huggingface-cli's login, never from params. Returns its URL."""
    from huggingface_hub import HfApi

    from ..errors import ConfigError

    api = HfApi()
    try:
        api.create_repo(model_id, private=True, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=model_id, commit_message="synthir publish")
    except Exception as error:  # offline, no token, no permission: one line naming the setting
        reason = f"{type(error).__name__}: {error}"
        raise ConfigError(f"publish.push_to_hub: could not push to '{model_id}' ({reason})") from None
    return f"https://huggingface.co/{model_id}"
