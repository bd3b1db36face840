"""The report across experiments: report/README.md, a markdown table per section, and PNG plots (matplotlib, no
network), from an export of `synthir export-experiments` (`synthir.results.runs`).

The study's sections (configurations over seeds, sweeps) come from `synthir.results.study`; here, every experiment,
its params as they differ from the reference experiment (keys one lacks, e.g. from an older params.yaml, are not
counted as differences), and its cost. Cost is what an experiment's data needed from the LLM (requests served,
fresh or from the cache) and the wall time of its stages.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..config import ReportParams
from ..errors import SynthirError
from ..fileio import atomic_dir, atomic_file
from .runs import Experiment, differences, get_dotted, load_experiments, short_value, value_of
from .study import Configuration, configurations, study_section, sweep_section


def plot_cost(runs: list[Experiment], metric: str, out: Path) -> None:
    """Each experiment's gain in `metric` over the base model against the LLM requests behind its data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for run in runs:
        gain = get_dotted(run.metrics.get("metrics/eval.json", {}), f"delta.{metric}")
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


def render_report(params: ReportParams, experiments: Path, out_dir: Path) -> dict:
    """The `report` stage: the experiments exported to `experiments` reported in `out_dir` as `params` say
    (`write_report`); returns what was drawn."""
    runs = load_experiments(experiments)
    return write_report(runs, params.reference, params.sweeps, params.metrics, out_dir, params.selected)


def write_report(
    runs: list[Experiment],
    reference_name: str,
    sweeps: Mapping[str, list[str]],
    metrics: list[str],
    out_dir: Path,
    selected: list[str] = (),
) -> dict:
    """`out_dir`/README.md and `out_dir`/figures/*.png; returns what was drawn. `reference_name` is an experiment
    or a configuration of the study (its first seed's experiment is what every experiment's changed params are
    listed against); `sweeps` name the params each sweep varies (`synthir.results.study.sweep_families`);
    `selected` are the configurations chosen on dev."""
    configs = {c.name: c for c in configurations(runs)}
    reference = _reference(runs, configs, reference_name)
    _check_selected(configs, selected)
    every_run = every_run_section(runs, reference, metrics)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out_dir / "figures") as figures:
        sweep_lines, drawn = sweep_section(list(configs.values()), sweeps, metrics[0], figures)
        study_lines = study_section(runs, reference_name, list(selected), metrics, figures)
        cost_lines = cost_section(runs, metrics[0], figures)
        names = sorted(p.name for p in figures.glob("*.png"))
    lines = [*_heading(runs, reference_name), *study_lines, *sweep_lines, *every_run, *cost_lines]
    with atomic_file(out_dir / "README.md") as handle:
        handle.write("\n".join(lines) + "\n")
    return {"runs": len(runs), "sweeps": drawn, "figures": names}


def _reference(runs: list[Experiment], configs: dict[str, Configuration], name: str) -> Experiment:
    """The experiment named `name`, or the first seed's experiment of the configuration named so (`report.reference`);
    SynthirError naming what there is otherwise."""
    by_name = {r.name: r for r in runs}
    reference = by_name.get(name) or (configs[name].runs[0] if name in configs else None)
    if reference is None:
        known = ", ".join([*by_name, *configs]) or "none"
        raise SynthirError(f"report.reference: no finished experiment or configuration named '{name}' (found: {known})")
    return reference


def _check_selected(configs: dict[str, Configuration], selected: list[str]) -> None:
    """Every configuration `report.selected` names exists; SynthirError naming the others otherwise."""
    unknown = [name for name in selected if name not in configs]
    if unknown:
        found = ", ".join(configs) or "none"
        raise SynthirError(f"report.selected: no configuration named {', '.join(map(repr, unknown))} (found: {found})")


def _heading(runs: list[Experiment], reference_name: str) -> list[str]:
    return [
        "# Results",
        "",
        f"{len(runs)} finished experiments; reference `{reference_name}`. Generated by the `report` stage from",
        "`dvc exp show --json` (docs/reproducibility.md, *Experiments*); every number is in the runs' metrics files.",
        "",
    ]


def every_run_section(runs: list[Experiment], reference: Experiment, metrics: list[str]) -> list[str]:
    """Markdown: one row per experiment, best `metrics[0]` first, with its params as they differ from
    `reference`, its scores and its cost."""
    lines = [
        "## Every run",
        "",
        "| run | changed params | " + " | ".join(metrics) + " | Δ " + metrics[0] + " vs base | LLM requests | "
        "fresh LLM calls | fresh prompt tokens (reused) / generated | stage seconds |",
        "|---|---|" + "---|" * (len(metrics) + 5),
    ]
    for run in sorted(runs, key=lambda r: -(r.metric(metrics[0]) or 0)):
        lines.append(_run_row(run, reference, metrics))
    return lines


def _run_row(run: Experiment, reference: Experiment, metrics: list[str]) -> str:
    diff = sorted(differences(run, reference))
    changed = "; ".join(f"`{k}={short_value(value_of(run, k))}`" for k in diff) or "(reference)"
    delta = get_dotted(run.metrics.get("metrics/eval.json", {}), f"delta.{metrics[0]}")
    return (
        f"| {run.name} | {changed} | "
        + " | ".join(_fmt(run.metric(m)) for m in metrics)
        + f" | {_fmt(delta)} | {run.llm_requests()} | {run.fresh('calls')} | "
        f"{run.fresh('tokens_in')} ({run.fresh('tokens_cached')}) / {run.fresh('tokens_out')} | "
        + ", ".join(f"{k} {v:.0f}" for k, v in run.seconds().items())
        + " |"
    )


def cost_section(runs: list[Experiment], metric: str, figures: Path) -> list[str]:
    """Markdown and its figure (`figures`/cost.png): gain against the LLM requests behind it."""
    plot_cost(runs, metric, figures / "cost.png")
    return ["", "## Cost against gain", "", "![cost](figures/cost.png)", ""]
