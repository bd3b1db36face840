"""Results across experiments: a markdown table and PNG plots (matplotlib, no network) from `dvc exp show --json`.

The study's configurations (runs over seeds) and its sweeps are in `synthir.study`; here, every run, its
params as they differ from the reference run (keys a run lacks, e.g. from an older params.yaml, are not counted
as differences), and its cost. Cost is what a run's data needed from the LLM (requests
served, fresh or from the cache) and the wall time of its stages.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .config import AdaptParams, AlignParams
from .errors import SynthirError

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
"""Committed per-query scores (`synthir.evaluate.per_query_record`) that an export attaches to each run."""


@dataclass
class Run:
    name: str
    rev: str
    params: dict[str, object]
    metrics: dict[str, dict]
    timestamp: str = ""
    per_query: dict = field(default_factory=dict)
    """{split, metrics, systems: {name: {query id: scores}}}: base, bm25, bm25+base, student, bm25+student."""

    def metric(self, name: str) -> float | None:
        return _get(self.metrics.get("metrics/eval.json", {}), name)

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
            value = _get(self.metrics.get(path, {}), key)
            if isinstance(value, int | float):
                out[stage] = float(value)
        return out


def system_scores(record: dict, system: str, metric: str = "ndcg@10") -> dict[str, float]:
    """One system's per-query `metric` from a `per_query_record`."""
    systems = record.get("systems", {})
    if system not in systems:
        raise KeyError(f"no system '{system}' (have: {', '.join(systems) or 'none'})")
    metrics = record.get("metrics", [])
    if metric not in metrics:
        raise KeyError(f"no per-query {metric} (have: {', '.join(metrics)})")
    column = metrics.index(metric)
    return {q: values[column] for q, values in systems[system].items()}


DEFAULT_SYSTEM = "student"
"""The system of a run that `synthir compare NAME` means: the trained (or aligned) retriever."""


def scores_of(spec: str, runs: list[Run], metric: str = "ndcg@10") -> dict[str, float]:
    """Per-query scores named on the command line: `NAME[:SYSTEM]`, an experiment's system (student,
    bm25+student, base, bm25, bm25+base); `NAME,NAME,...[:SYSTEM]`, the mean over runs (seeds); or a JSON file
    `PATH[:SYSTEM]`, a committed per-query record or the {query: {metric: score}} sidecar of `synthir evaluate`."""
    from .stats import mean_over_runs

    target, _, system = spec.partition(":")
    if Path(target).is_file():
        data = json.loads(Path(target).read_text(encoding="utf-8"))
        if "systems" not in data:  # a sidecar: {query: {metric: score}}
            return {q: float(values[metric]) for q, values in data.items()}
        return system_scores(data, system or next(iter(data["systems"])), metric)
    by_name = {run.name: run for run in runs}
    chosen = []
    for name in target.split(","):
        if name not in by_name:
            raise SynthirError(f"{spec}: no file and no experiment named '{name}' (have: {', '.join(by_name)})")
        if not by_name[name].per_query:
            raise SynthirError(f"{spec}: experiment '{name}' has no per-query scores (exported before they existed)")
        chosen.append(system_scores(by_name[name].per_query, system or DEFAULT_SYSTEM, metric))
    return mean_over_runs(chosen)


def _get(data: Mapping, dotted: str):
    for part in dotted.split("."):
        if not isinstance(data, Mapping) or part not in data:
            return None
        data = data[part]
    return data


def flatten(data: Mapping, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out |= flatten(value, f"{name}.")
        else:
            out[name] = tuple(value) if isinstance(value, list) else value
    return out


def load_experiments(path: Path) -> list[Run]:
    """Finished experiments (with an evaluation) from a `dvc exp show --json` export; the newest of a name wins."""
    try:
        entries = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SynthirError(f"{path}: not found; export it with `synthir export-experiments`") from None
    except json.JSONDecodeError as error:
        raise SynthirError(f"{path}:{error.lineno}: not JSON from `dvc exp show --json`: {error.msg}") from None
    if not isinstance(entries, list):
        raise SynthirError(f"{path}: expected the list `dvc exp show --json` writes")
    runs: dict[str, Run] = {}
    for entry in entries:
        for experiment in entry.get("experiments") or []:
            executor = experiment.get("executor") or {}
            if executor.get("state") not in (None, "success"):
                continue  # queued, running or failed
            for rev in experiment.get("revs") or []:
                run = _run(rev)
                if run is not None and (run.name not in runs or run.timestamp > runs[run.name].timestamp):
                    runs[run.name] = run
    return sorted(runs.values(), key=lambda r: r.name)


def _run(rev: dict) -> Run | None:
    data = rev.get("data") or {}
    params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
    metrics = {path: (item or {}).get("data") or {} for path, item in (data.get("metrics") or {}).items()}
    if not metrics.get("metrics/eval.json"):
        return None
    name = rev.get("name") or rev.get("rev", "")[:7]
    return Run(
        name, rev.get("rev", ""), flatten(params), metrics, data.get("timestamp", ""), data.get("per_query") or {}
    )


# The on/off switches of optional blocks: a run from before a block existed ran without it (no `align` block =
# alignment off, no `adapt` block = no adaptation). Other keys a run lacks are not compared.
SWITCH_DEFAULTS: dict[str, object] = {
    "adapt.method": AdaptParams.model_fields["method"].default,
    "align.enabled": AlignParams.model_fields["enabled"].default,
    "dataset.dev_fraction": 0.0,  # before the dev split existed, training read every train query
}
_MISSING = object()


def value_of(run: Run, key: str):
    return run.params.get(key, SWITCH_DEFAULTS.get(key, _MISSING))


def differences(run: Run, reference: Run) -> set[str]:
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


def _short(value: object) -> str:
    if isinstance(value, tuple):
        return "+".join(map(str, value))
    text = str(value)
    return text if len(text) <= 24 else "…" + text[-20:]


def plot_cost(runs: list[Run], metric: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for run in runs:
        gain = _get(run.metrics.get("metrics/eval.json", {}), f"delta.{metric}")
        if gain is None:
            continue
        ax.scatter(run.llm_requests(), gain, color="#dd8452")
        ax.annotate(run.name, (run.llm_requests(), gain), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(0, color="grey", linewidth=1)
    ax.set_xlabel("LLM requests behind the run's data (fresh + cached)")
    ax.set_ylabel(f"gain in {metric} over the base model")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _fmt(value, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def write_report(
    runs: list[Run],
    reference_name: str,
    sweeps: Mapping[str, list[str]],
    metrics: list[str],
    out_dir: Path,
    selected: list[str] = (),
) -> dict:
    """`out_dir`/README.md and `out_dir`/figures/*.png; returns what was drawn. `reference_name` is a run or a
    configuration of the study (its first seed's run is what every run's changed params are listed against);
    `sweeps` name the params each sweep varies (`synthir.study.sweep_families`); `selected` are the
    configurations chosen on dev."""
    from .fileio import atomic_dir, atomic_file
    from .study import configurations, study_section, sweep_section

    by_name = {r.name: r for r in runs}
    configs = {c.name: c for c in configurations(runs)}
    reference = by_name.get(reference_name) or (configs[reference_name].runs[0] if reference_name in configs else None)
    if reference is None:
        known = ", ".join([*by_name, *configs]) or "none"
        raise SynthirError(
            f"report.reference: no finished experiment or configuration named '{reference_name}' (found: {known})"
        )
    unknown = [name for name in selected if name not in configs]
    if unknown:
        found = ", ".join(configs) or "none"
        raise SynthirError(f"report.selected: no configuration named {', '.join(map(repr, unknown))} (found: {found})")
    lines = [
        "# Results",
        "",
        f"{len(runs)} finished experiments; reference `{reference_name}`. Generated by the `report` stage from",
        "`dvc exp show --json` (see the README's *Experiments* section); every number is in the runs' metrics files.",
        "",
        "## Every run",
        "",
        "| run | changed params | " + " | ".join(metrics) + " | Δ " + metrics[0] + " vs base | LLM requests | "
        "fresh LLM calls | fresh prompt tokens (reused) / generated | stage seconds |",
        "|---|---|" + "---|" * (len(metrics) + 5),
    ]
    every_run = lines.index("## Every run")  # the study's section goes before it
    for run in sorted(runs, key=lambda r: -(r.metric(metrics[0]) or 0)):
        diff = sorted(differences(run, reference))
        changed = "; ".join(f"`{k}={_short(value_of(run, k))}`" for k in diff) or "(reference)"
        delta = _get(run.metrics.get("metrics/eval.json", {}), f"delta.{metrics[0]}")
        seconds = run.seconds()
        lines.append(
            f"| {run.name} | {changed} | "
            + " | ".join(_fmt(run.metric(m)) for m in metrics)
            + f" | {_fmt(delta)} | {run.llm_requests()} | {run.fresh('calls')} | "
            f"{run.fresh('tokens_in')} ({run.fresh('tokens_cached')}) / {run.fresh('tokens_out')} | "
            + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())
            + " |"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out_dir / "figures") as figures:
        sweep_lines, drawn = sweep_section(list(configs.values()), sweeps, metrics[0], figures)
        lines[every_run:every_run] = study_section(runs, reference_name, list(selected), metrics, figures) + sweep_lines
        plot_cost(runs, metrics[0], figures / "cost.png")
        lines += ["", "## Cost against gain", "", "![cost](figures/cost.png)", ""]
        names = sorted(p.name for p in figures.glob("*.png"))
    with atomic_file(out_dir / "README.md") as handle:
        handle.write("\n".join(lines) + "\n")
    return {"runs": len(runs), "sweeps": drawn, "figures": names}


def export_experiments(out: Path, all_commits: bool = True, merge: bool = False) -> int:
    """`dvc exp show --json` (all commits: sweeps may span several) written to `out`; returns the runs found.
    With `merge`, the runs already in `out` are kept (experiments live in one machine's git refs, so a study run
    on several machines or clones is gathered run by run); a run exported again replaces its older copy."""
    import subprocess

    from .fileio import atomic_file

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
    if merge and out.exists():
        data = merge_exports(json.loads(out.read_text(encoding="utf-8")), data)
    with atomic_file(out) as handle:
        handle.write(json.dumps(data, indent=1) + "\n")
    return sum(len(entry["experiments"]) for entry in data)


def committed_per_query(rev: str) -> dict:
    """The per-query records an experiment's commit holds, merged into one (their systems side by side)."""
    import subprocess

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


def merge_exports(old: list[dict], new: list[dict]) -> list[dict]:
    """Commits of both exports; within a commit, the experiments of both by name, the new copy winning."""
    merged = {entry["rev"]: {**entry, "experiments": list(entry["experiments"])} for entry in old}
    for entry in new:
        if entry["rev"] not in merged:
            merged[entry["rev"]] = entry
            continue
        fresh = {run.get("name") for run in entry["experiments"]}
        kept = [run for run in merged[entry["rev"]]["experiments"] if run.get("name") not in fresh]
        merged[entry["rev"]]["experiments"] = kept + entry["experiments"]
    return list(merged.values())
