"""The experiment data model: the finished experiments of `synthir export-experiments` (a `dvc exp show --json`
export with each commit's per-query scores), their params flattened and compared, their cost and scores.

An `Experiment` is one DVC experiment: its params (flattened, `train.loss`), its metrics files, and the per-query
scores its commit holds. `synthir.results.report` (every experiment, the cost plot) and `synthir.results.study`
(configurations over seeds, sweeps) read experiments from here; `synthir compare` reads per-query scores.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..config import AdaptParams, AlignParams
from ..errors import DataError, SynthirError, excerpt
from ..fileio import atomic_file, read_json
from ..scores import METRIC_NAME, check_score
from .stats import mean_over_runs

STAGE_SECONDS = {
    "generate": ("metrics/generate.json", "seconds"),
    "verify": ("metrics/verify.json", "seconds"),
    "triples": ("metrics/triples.json", "seconds"),
    "adapt": ("metrics/adapt.json", "seconds"),
    "train": ("metrics/train.json", "seconds"),
    "align_judge": ("metrics/align_judge.json", "seconds"),
    "align_train": ("metrics/align_train.json", "seconds"),
    "evaluate": ("metrics/eval.json", "seconds.total"),
}
LLM_STAGES = ("metrics/generate.json", "metrics/verify.json", "metrics/align_judge.json")
PER_QUERY_FILES = ("metrics/baseline_per_query.json", "metrics/eval_per_query.json")
"""Committed per-query scores (`synthir.evaluation.evaluate.per_query_record`) that an export attaches to each run."""


@dataclass
class Experiment:
    """One finished DVC experiment (a run of the pipeline), as an export holds it."""

    name: str
    rev: str
    params: dict[str, object]
    metrics: dict[str, dict]
    timestamp: str = ""
    per_query: dict = field(default_factory=dict)
    """{split, metrics, systems: {name: {query id: scores}}}: base, bm25, bm25+base, student, bm25+student."""
    source: str = ""
    """The export the run was read from."""

    def metric(self, name: str) -> float | None:
        return get_dotted(self.metrics.get("metrics/eval.json", {}), name)

    def llm_requests(self) -> int:
        """Completions and judgements the run's data needed: fresh calls plus cache hits, over every LLM stage."""
        total = 0
        for path in LLM_STAGES:
            llm = self.metrics.get(path, {}).get("llm") or {}
            total += int(llm.get("calls", 0)) + int(llm.get("cache_hits", 0))
        return total

    def fresh(self, key: str) -> int:
        """A counter (calls, tokens_in, tokens_cached, tokens_out) summed over the LLM stages, for work done in
        this run."""
        return sum(int((self.metrics.get(p, {}).get("llm") or {}).get(key, 0)) for p in LLM_STAGES)

    def seconds(self) -> dict[str, float]:
        out = {}
        for stage, (path, key) in STAGE_SECONDS.items():
            value = get_dotted(self.metrics.get(path, {}), key)
            if isinstance(value, int | float):
                out[stage] = float(value)
        return out


def get_dotted(data: Mapping, dotted: str):
    """The value at a dotted path of nested mappings (`delta.ndcg@10`); None where a part is missing."""
    for part in dotted.split("."):
        if not isinstance(data, Mapping) or part not in data:
            return None
        data = data[part]
    return data


def short_value(value: object) -> str:
    """A param's value as a table shows it: a list joined by `+`, long text cut to its last 20 characters."""
    if isinstance(value, tuple):
        return "+".join(map(str, value))
    text = str(value)
    return text if len(text) <= 24 else "…" + text[-20:]


def system_scores(record: dict, system: str, metric: str = "ndcg@10") -> dict[str, float]:
    """One system's per-query `metric` from a `per_query_record` (checked by `check_record`)."""
    systems = record.get("systems", {})
    if system not in systems:
        raise KeyError(f"no system {excerpt(system)} (have: {', '.join(systems) or 'none'})")
    metrics = record.get("metrics", [])
    if metric not in metrics:
        raise KeyError(f"no per-query {excerpt(metric)} (have: {', '.join(metrics)})")
    column = metrics.index(metric)
    return {q: values[column] for q, values in systems[system].items()}


JSON_FILE_BYTES = 256 * 2**20
"""The largest experiments export or per-query file read (the study's 73 experiments take 6 MB)."""


def _expect(value: object, kind: type, where: str) -> object:
    """`value` if it is a `kind` (null: an empty one); DataError saying what it is otherwise."""
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise DataError(f"{where}: expected {_json_type(kind())}, got {_json_type(value)}")
    return value


def check_record(record: object, where: str) -> dict:
    """A per-query record ({split, metrics, systems: {name: {query id: [score per metric]}}}) as
    `synthir.evaluation.evaluate.per_query_record` writes it; DataError naming `where`, the system and the query
    otherwise."""
    record = _expect(record, dict, where)
    if not record:
        return record  # an experiment from before per-query scores were committed
    split = record.get("split")
    if not isinstance(split, str) or not split:
        raise DataError(f"{where}: 'split' is {excerpt(split)}, expected the split's name")
    if "," in split:
        raise DataError(f"{where}: the record mixes the splits {excerpt(split)}; a paired test needs one split")
    metrics = _expect(record.get("metrics"), list, f"{where}: 'metrics'")
    if not metrics or not all(isinstance(m, str) for m in metrics) or len(set(metrics)) < len(metrics):
        raise DataError(f"{where}: 'metrics' is {excerpt(metrics)}, expected the names of the metrics scored")
    for system, scores in _expect(record.get("systems"), dict, f"{where}: 'systems'").items():
        at_system = f"{where}: system {excerpt(system)}"
        for query, values in _expect(scores, dict, at_system).items():
            at_query = f"{at_system}, query {excerpt(query)}"
            if not isinstance(values, list) or len(values) != len(metrics):
                count = f"{len(values)} scores" if isinstance(values, list) else _json_type(values)
                raise DataError(f"{at_query}: expected {len(metrics)} scores ({', '.join(metrics)}), got {count}")
            for metric, value in zip(metrics, values, strict=True):
                check_score(value, f"{at_query}: {metric}")
    return record


DEFAULT_SYSTEM = "student"
"""The system of a run that `synthir compare NAME` means: the trained (or aligned) retriever."""


@dataclass(frozen=True)
class Scores:
    """Per-query scores named on the command line, and the split they are on (None: not known)."""

    split: str | None
    values: dict[str, float]


def seed_scores(runs: list[Experiment], system: str, metric: str = "ndcg@10") -> Scores:
    """Each query's score averaged over runs (seeds) of one configuration; runs on different splits are refused."""
    splits = {run.name: run.per_query["split"] for run in runs}
    if len(set(splits.values())) > 1:
        named = ", ".join(f"{name} on {split}" for name, split in splits.items())
        raise DataError(f"{runs[0].source}: the seeds mix splits ({named}); average runs of one split")
    values = mean_over_runs([system_scores(run.per_query, system, metric) for run in runs])
    return Scores(next(iter(splits.values()), None), values)


def scores_of(spec: str, runs: list[Experiment], metric: str = "ndcg@10") -> Scores:
    """Per-query scores named on the command line: `NAME[:SYSTEM]`, an experiment's system (student,
    bm25+student, base, bm25, bm25+base); `NAME,NAME,...[:SYSTEM]`, the mean over runs (seeds); or a JSON file
    `PATH[:SYSTEM]`, a committed per-query record or the {query: {metric: score}} sidecar of `synthir evaluate`."""
    target, _, system = spec.partition(":")
    if Path(target).is_file():
        return _file_scores(Path(target), system, metric)
    by_name = {run.name: run for run in runs}
    chosen = []
    for name in target.split(","):
        if name not in by_name:
            raise SynthirError(
                f"{spec[:80]}: no file and no experiment named {excerpt(name)} (have: {', '.join(by_name)})"
            )
        if not by_name[name].per_query:
            raise SynthirError(
                f"{spec[:80]}: experiment '{name}' has no per-query scores (exported before they existed)"
            )
        chosen.append(by_name[name])
    return seed_scores(chosen, system or DEFAULT_SYSTEM, metric)


def _file_scores(path: Path, system: str, metric: str) -> Scores:
    data = _expect(read_json(path, "per-query scores", JSON_FILE_BYTES), dict, str(path))
    if "systems" in data:
        record = check_record(data, str(path))
        if not record.get("systems"):
            raise DataError(f"{path}: no systems scored (the evaluation was skipped)")
        return Scores(record["split"], system_scores(record, system or next(iter(record["systems"])), metric))
    values = {}  # a sidecar of `synthir evaluate`: {query: {metric: score}}
    for query, scores in data.items():
        at_query = f"{path}: query {excerpt(query)}"
        if metric not in _expect(scores, dict, at_query):
            raise DataError(f"{at_query}: no {excerpt(metric)} (have: {', '.join(map(str, scores)) or 'none'})")
        values[query] = check_score(scores[metric], f"{at_query}: {metric}")
    return Scores(_sidecar_split(path), values)


def _sidecar_split(path: Path) -> str | None:
    """The split of a `synthir evaluate` sidecar (X.per_query.json), from its metrics file X.json when there."""
    summary = path.with_name(path.name.removesuffix(".per_query.json") + ".json")
    if summary == path or not summary.is_file():
        return None
    evaluation = _expect(read_json(summary, "the metrics of an evaluation", JSON_FILE_BYTES), dict, str(summary))
    split = evaluation.get("split")
    return split if isinstance(split, str) else None


def flatten(data: Mapping, prefix: str = "") -> dict[str, object]:
    """Nested params as dotted keys (`train.loss`); lists become tuples, so values compare and hash."""
    out: dict[str, object] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out |= flatten(value, f"{name}.")
        else:
            out[name] = tuple(value) if isinstance(value, list) else value
    return out


def load_experiments(path: Path) -> list[Experiment]:
    """Finished experiments (with an evaluation) from a `dvc exp show --json` export; the newest of a name wins.
    A malformed export is a DataError naming the file and the place in it."""
    if not Path(path).exists():
        raise SynthirError(f"{path}: not found; export it with `synthir export-experiments`")
    entries = read_json(path, "an export of `dvc exp show --json`", JSON_FILE_BYTES)
    if not isinstance(entries, list):
        raise SynthirError(f"{path}: expected the list `dvc exp show --json` writes, got {_json_type(entries)}")
    runs: dict[str, Experiment] = {}
    for i, entry in enumerate(entries):
        where = f"{path}: [{i}]"
        experiments = _expect(_expect(entry, dict, where).get("experiments"), list, f"{where}.experiments")
        for j, experiment in enumerate(experiments):
            at_experiment = f"{where}.experiments[{j}]"
            experiment = _expect(experiment, dict, at_experiment)
            state = _expect(experiment.get("executor"), dict, f"{at_experiment}.executor").get("state")
            if state not in (None, "success"):
                continue  # queued, running or failed
            for k, rev in enumerate(_expect(experiment.get("revs"), list, f"{at_experiment}.revs")):
                run = _read_experiment(rev, f"{at_experiment}.revs[{k}]", str(path))
                if run is not None and (run.name not in runs or run.timestamp > runs[run.name].timestamp):
                    runs[run.name] = run
    return sorted(runs.values(), key=lambda r: r.name)


def _read_experiment(rev: object, where: str, source: str) -> Experiment | None:
    rev = _expect(rev, dict, where)
    data = _expect(rev.get("data"), dict, f"{where}.data")
    at_params = f"{where}.data.params['params.yaml']"
    params_file = _expect(_expect(data.get("params"), dict, f"{where}.data.params").get("params.yaml"), dict, at_params)
    params = _expect(params_file.get("data"), dict, f"{at_params}.data")
    metrics = {}
    for path, item in _expect(data.get("metrics"), dict, f"{where}.data.metrics").items():
        at_file = f"{where}.data.metrics[{excerpt(path)}]"
        metrics[path] = _expect(_expect(item, dict, at_file).get("data"), dict, f"{at_file}.data")
        if path in SCORE_FILES:
            _check_metrics(metrics[path], f"{at_file}.data")
    if not metrics.get("metrics/eval.json"):
        return None
    name, commit = (_expect(rev.get(key), str, f"{where}.{key}") for key in ("name", "rev"))
    timestamp = _expect(data.get("timestamp"), str, f"{where}.data.timestamp")  # where `dvc exp show` puts it
    per_query = check_record(data.get("per_query"), f"{where}.data.per_query")
    return Experiment(name or commit[:7], commit, flatten(params), metrics, timestamp, per_query, source)


SCORE_FILES = ("metrics/eval.json", "metrics/baseline.json")
"""The metrics files whose scores the report and the study average, checked when an export is read."""


def _check_metrics(data: dict, where: str, low: float = 0.0) -> None:
    """Every metric (`ndcg@10`, ...) in a metrics file's data is a number in [0, 1] ([-1, 1] under `delta`)."""
    for key, value in data.items():
        if isinstance(value, dict):
            _check_metrics(value, f"{where}.{key}", -1.0 if key == "delta" else low)
        elif METRIC_NAME.fullmatch(str(key)):
            check_score(value, f"{where}.{key}", low)


# The on/off switches of optional blocks: a run from before a block existed ran without it (no `align` block =
# alignment off, no `adapt` block = no adaptation). Other keys a run lacks are not compared.
SWITCH_DEFAULTS: dict[str, object] = {
    "adapt.method": AdaptParams.model_fields["method"].default,
    "align.enabled": AlignParams.model_fields["enabled"].default,
    "dataset.dev_fraction": 0.0,  # before the dev split existed, training read every train query
}
_MISSING = object()
# Values a run recorded under a spelling params no longer accept, as params write them now.
RESPELLED: dict[tuple[str, object], object] = {
    ("evaluate.dtype", "auto"): "float32",  # `auto` chose float32 on a CPU, where every committed run was made
}


def value_of(run: Experiment, key: str):
    """A param of `run` as params spell it now: a switch the run lacks takes its default (`SWITCH_DEFAULTS`), a
    respelled value its new spelling; another key the run lacks is a sentinel `differences` does not compare."""
    value = run.params.get(key, SWITCH_DEFAULTS.get(key, _MISSING))
    return RESPELLED.get((key, value), value) if isinstance(value, str) else value


def differences(run: Experiment, reference: Experiment) -> set[str]:
    """Params whose values differ; a switch one run lacks takes its default, other missing keys are not compared.
    The `report` block describes the comparison, not the run, and is left out."""
    diff = set()
    for key in run.params.keys() | reference.params.keys():
        if key.startswith("report."):
            continue
        mine, theirs = value_of(run, key), value_of(reference, key)
        if mine is not _MISSING and theirs is not _MISSING and mine != theirs:
            diff.add(key)
    return diff


def export_experiments(out: Path, all_commits: bool = True, merge: bool = False) -> int:
    """`dvc exp show --json` (all commits: sweeps may span several) written to `out`; returns the runs found.
    With `merge`, the runs already in `out` are kept (experiments live in one machine's git refs, so a study run
    on several machines or clones is gathered run by run); a run exported again replaces its older copy."""
    previous = _previous_export(out) if merge and out.exists() else None  # checked before the slow part
    cmd = ["dvc", "exp", "show", "--json"] + (["--all-commits"] if all_commits else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SynthirError(f"`{' '.join(cmd)}` failed: {done.stderr.strip()[-500:]}")
    data = [entry for entry in json.loads(done.stdout) if entry.get("experiments")]  # commits with experiments
    for entry in data:
        for experiment in entry["experiments"]:
            for rev in experiment.get("revs") or []:
                if rev.get("data") is not None and rev.get("rev"):
                    rev["data"]["per_query"] = committed_per_query(rev["rev"])
    if previous is not None:
        data = merge_exports(previous, data)
    with atomic_file(out) as handle:
        handle.write(json.dumps(data, indent=1) + "\n")
    return sum(len(entry["experiments"]) for entry in data)


def committed_per_query(rev: str) -> dict:
    """The per-query records an experiment's commit holds, merged into one (their systems side by side)."""
    merged: dict = {}
    for path in PER_QUERY_FILES:
        done = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
        if done.returncode != 0:
            continue  # an experiment from before per-query scores were committed
        record = json.loads(done.stdout)
        merged.setdefault("split", record["split"])
        merged.setdefault("metrics", record["metrics"])
        merged.setdefault("systems", {}).update(record["systems"])
    return merged


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number"}


def _json_type(value: object) -> str:
    return "true or false" if isinstance(value, bool) else _JSON_TYPES.get(type(value), "null")


def _previous_export(path: Path) -> list[dict]:
    """The commits an earlier export wrote to `path`, in the shape `merge_exports` reads; DataError naming the
    file (and the entry) otherwise."""
    entries = read_json(path, "an export of experiments", JSON_FILE_BYTES)
    if not isinstance(entries, list):
        raise DataError(
            f"{path}: expected the array `synthir export-experiments` writes, got {_json_type(entries)}; "
            "export again without --merge"
        )
    for number, entry in enumerate(entries, start=1):
        problem = _entry_problem(entry)
        if problem:
            raise DataError(f"{path}: entry {number}: {problem}; fix it or export again without --merge")
    return entries


def _entry_problem(entry: object) -> str | None:
    """What makes `entry` not a commit of an export (`rev`, `experiments` of objects with a string `name`)."""
    if not isinstance(entry, dict):
        return f"expected an object with rev and experiments, got {_json_type(entry)}"
    if not isinstance(entry.get("rev"), str):
        return f"rev is {_json_type(entry.get('rev'))}, expected a string"
    experiments = entry.get("experiments")
    if experiments is not None and not isinstance(experiments, list):
        return f"experiments is {_json_type(experiments)}, expected an array"
    for number, experiment in enumerate(experiments or [], start=1):
        if not isinstance(experiment, dict):
            return f"experiment {number} is {_json_type(experiment)}, expected an object"
        if not isinstance(experiment.get("name"), str | None):
            return f"experiment {number}: name is {_json_type(experiment['name'])}, expected a string"
    return None


def merge_exports(old: list[dict], new: list[dict]) -> list[dict]:
    """Commits of both exports; within a commit, the experiments of both by name, the new copy winning."""
    merged = {entry["rev"]: {**entry, "experiments": list(entry.get("experiments") or [])} for entry in old}
    for entry in new:
        if entry["rev"] not in merged:
            merged[entry["rev"]] = entry
            continue
        fresh = {run.get("name") for run in entry["experiments"]}
        kept = [run for run in merged[entry["rev"]]["experiments"] if run.get("name") not in fresh]
        merged[entry["rev"]]["experiments"] = kept + entry["experiments"]
    return list(merged.values())
