"""The study's tables (issue 14): configurations over seeds, per split and setting, with paired significance.

A configuration is the runs whose params differ only in their training seeds; it is named after its runs, less
a trailing `-s<seed>`. Only runs made under the protocol (params with `dataset.dev_fraction`, so trained
without the dev queries) are configurations; older runs stay in the report's list of all runs.

A configuration's setting says which labels it used: *zero-label* (no labeled query in training or in a
prompt), *label-augmented* (the labeled train queries plus whatever else), or *few-shot prompts* (labeled
queries only as the generator's examples). Each configuration is compared with the base model and with the
reference configuration on the same split by a paired randomization test over the per-query scores averaged
over its seeds (`synthir.results.stats`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from .runs import Experiment, differences, get_dotted, seed_scores, short_value, value_of
from .stats import compare

SEED_KEYS = frozenset({"train.seed", "align.seed"})
ZERO_LABEL, LABELED, FEW_SHOT = "zero-label", "label-augmented", "few-shot prompts"
SETTINGS = (ZERO_LABEL, LABELED, FEW_SHOT)
_SEED_SUFFIX = re.compile(r"-s(eed)?\d+$")


@dataclass
class Configuration:
    name: str
    runs: list[Experiment]

    @property
    def params(self) -> dict[str, object]:
        return self.runs[0].params

    @property
    def split(self) -> str:
        return str(self.params.get("evaluate.split", "test"))

    @property
    def setting(self) -> str:
        return setting_of(self.params)

    def values(self, metric: str) -> list[float]:
        return [v for v in (run.metric(metric) for run in self.runs) if v is not None]

    def scores(self, system: str = "student", metric: str = "ndcg@10") -> dict[str, float]:
        """Per-query scores averaged over the seeds ({} when the runs carry no per-query scores); seeds scored on
        different splits are a DataError."""
        scored = [run for run in self.runs if run.per_query]
        return seed_scores(scored, system, metric).values if scored else {}


def setting_of(params: dict[str, object]) -> str:
    sources = set(params.get("triples.sources") or ())
    if params.get("align.enabled"):
        sources |= set(params.get("align.query_sources") or ())
    if sources & {"train", "syntriever"}:
        return LABELED
    prompted = "doc2query" in sources and params.get("generate.doc2query.enabled") is not False
    return FEW_SHOT if prompted and params.get("generate.doc2query.few_shot", 2) else ZERO_LABEL


def _same_configuration(a: Experiment, b: Experiment) -> bool:
    """Equal params, less the seeds and the `report` block. A key only one run has comes from a params block
    added in between: not a difference, unless it is a switch that was off before its block existed."""
    return not differences(a, b) - SEED_KEYS


def configurations(runs: Iterable[Experiment]) -> list[Configuration]:
    """Protocol runs grouped by name less `-s<seed>`; runs of one name whose params differ (beyond their seeds)
    are separate configurations, the later ones numbered."""
    groups: dict[str, list[list[Experiment]]] = {}
    for run in sorted(runs, key=lambda r: r.name):
        if "dataset.dev_fraction" not in run.params:
            continue
        named = groups.setdefault(_SEED_SUFFIX.sub("", run.name), [])
        match = next((g for g in named if _same_configuration(g[0], run)), None)
        if match is None:
            named.append([run])
        else:
            match.append(run)
    return [
        Configuration(name if i == 0 else f"{name} ({i + 1})", members)
        for name, named in groups.items()
        for i, members in enumerate(named)
    ]


MIN_SEEDS = 3
"""Seeds a configuration needs before the study claims anything about it (issue 14)."""


def _seeds(config: Configuration) -> str:
    count = len(config.runs)
    return str(count) if count >= MIN_SEEDS else f"{count} (screening)"


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    std = f" ± {np.std(values, ddof=1):.4f}" if len(values) > 1 else ""
    return f"{np.mean(values):.4f}{std}"


LABEL_FREE = {"dense": "base", "bm25": "BM25", "hybrid": "BM25+base (RRF)"}
"""The baseline stage's systems (metrics/baseline.json keys) and how the report names them."""


def _scores(config: Configuration, system: str, metric: str) -> dict[str, float]:
    try:
        return config.scores(system, metric)
    except KeyError:  # a run without that system's per-query scores
        return {}


def _versus(config: Configuration, other: dict[str, float], metric: str) -> str:
    mine = _scores(config, "student", metric)
    if len(mine.keys() & other.keys()) < 2:
        return "—"
    result = compare(mine, other)
    p_value = "p<0.001" if result.p_value < 0.001 else f"p={result.p_value:.3f}"
    return f"{result.difference:+.4f} ({p_value})"


def _label_free(configs: list[Configuration], metric: str) -> str:
    baseline = configs[0].runs[0].metrics.get("metrics/baseline.json", {})
    values = {label: get_dotted(baseline, f"{key}.{metric}") for key, label in LABEL_FREE.items()}
    found = [f"{label} {value:.4f}" for label, value in values.items() if value is not None]
    return f"Label-free systems ({configs[0].name}'s baseline): " + ", ".join(found) + "." if found else ""


COLORS = {ZERO_LABEL: "#4c72b0", LABELED: "#dd8452", FEW_SHOT: "#8c8c8c"}


def plot_split(configs: list[Configuration], split: str, metric: str, out) -> None:
    """Bars of each configuration's mean (error bars: std over seeds), coloured by setting, with the label-free
    systems as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = sorted(
        (c for c in configs if c.split == split and c.values(metric)), key=lambda c: np.mean(c.values(metric))
    )
    fig, ax = plt.subplots(figsize=(7.5, 0.35 * len(rows) + 1.8))
    means = [np.mean(c.values(metric)) for c in rows]
    errors = [np.std(c.values(metric), ddof=1) if len(c.values(metric)) > 1 else 0.0 for c in rows]
    ax.barh(range(len(rows)), means, xerr=errors, color=[COLORS[c.setting] for c in rows], capsize=3)
    ax.set_yticks(range(len(rows)), [f"{c.name} ({len(c.runs)})" for c in rows], fontsize=8)
    baseline = rows[0].runs[0].metrics.get("metrics/baseline.json", {}) if rows else {}
    for (key, label), style in zip(LABEL_FREE.items(), (":", "--", "-."), strict=True):
        value = get_dotted(baseline, f"{key}.{metric}")
        if value is not None:
            ax.axvline(value, color="grey", linestyle=style, linewidth=1, label=f"{label} {value:.4f}")
    lines = [v for k in LABEL_FREE if (v := get_dotted(baseline, f"{k}.{metric}")) is not None]
    ax.set_xlim(min(means + lines) - 0.02, max(means + lines) + 0.02)
    handles = [Patch(color=color, label=name) for name, color in COLORS.items()]
    ax.legend(handles=handles + ax.get_legend_handles_labels()[0], fontsize=7, loc="lower right")
    ax.set_xlabel(f"{metric} on {split}: mean over seeds (count), std as error bars")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _row(config: Configuration, metrics: list[str], ref: Configuration | None, selected: list[str]) -> str:
    head, first = metrics[0], config.runs[0]
    hybrid = [get_dotted(r.metrics.get("metrics/eval.json", {}), f"hybrid.{head}") for r in config.runs]
    seconds = np.mean([sum(r.seconds().values()) for r in config.runs])
    versus_ref = _versus(config, _scores(ref, "student", head), head) if ref and ref is not config else "—"
    cells = [
        config.name,
        _seeds(config),
        *(_mean_std(config.values(m)) for m in metrics),
        _versus(config, _scores(config, "base", head), head),
        versus_ref,
        _mean_std([v for v in hybrid if v is not None]),
        "✓" if config.name.removesuffix("-test") in selected else "",
        f"{first.llm_requests()} ({first.fresh('calls')})",
        f"{first.fresh('tokens_in')} ({first.fresh('tokens_cached')}) / {first.fresh('tokens_out')}",
        f"{seconds:.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


def study_section(
    runs: list[Experiment], reference: str, selected: list[str], metrics: list[str], figures=None
) -> list[str]:
    """Markdown: a table per split (dev first) and setting, one row per configuration; with `figures` (a
    folder), a bar chart per split."""
    configs = configurations(runs)
    if not configs:
        return []
    head, lines = metrics[0], ["## The study: configurations over seeds", ""]
    lines += [
        f"Mean ± std over training seeds. Δ is the {head} difference of the seed-averaged per-query scores, with",
        "the p-value of a paired randomization test (10,000 sign flips; `synthir compare`). ✓: chosen on dev",
        "(`report.selected`), the configurations scored on test. Cost: LLM requests behind the data (fresh calls),",
        "prompt tokens (reused) / generated, and the stages' seconds, mean per seed. A configuration with fewer",
        f"than {MIN_SEEDS} seeds is a screening run (marked so): its differences are not claimed.",
    ]
    for split in sorted({c.split for c in configs}, key=lambda s: (s != "dev", s)):
        in_split = [c for c in configs if c.split == split]
        ref = next((c for c in in_split if c.name in (reference, f"{reference}-test")), None)
        lines += ["", f"### {split} split", "", _label_free(in_split, head)]
        if figures is not None:
            plot_split(in_split, split, head, figures / f"study-{split}.png")
            lines += ["", f"![{split}](figures/study-{split}.png)"]
        for setting in SETTINGS:
            rows = sorted((c for c in in_split if c.setting == setting), key=lambda c: -np.mean(c.values(head) or [0]))
            if not rows:
                continue
            lines += ["", f"**{setting}**", ""]
            lines += [
                "| configuration | seeds | "
                + " | ".join(metrics)
                + f" | Δ vs base | Δ vs {reference} | BM25+student {head} | chosen | LLM requests (fresh) "
                "| tokens in (reused) / out | seconds per seed |",
                "|---|---|" + "---|" * (len(metrics) + 7),
            ]
            lines += [_row(config, metrics, ref, selected) for config in rows]
    return [*lines, ""]


def _in_sweep(key: str, keys: Iterable[str]) -> bool:
    """A sweep key covers itself and the params under it (`verify.gecko` covers `verify.gecko.k`)."""
    return any(key == k or key.startswith(f"{k}.") for k in keys)


def _varied(a: Configuration, b: Configuration) -> set[str]:
    return differences(a.runs[0], b.runs[0]) - SEED_KEYS


def _numeric(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _swept(family: list[Configuration]) -> list[str]:
    """The params that vary within a family."""
    return sorted(set().union(*(_varied(c, family[0]) for c in family[1:])))


def sweep_families(configs: Iterable[Configuration], keys: list[str]) -> list[list[Configuration]]:
    """Configurations of one split that differ from each other only in `keys`, as families of two or more.

    A family's first member has the fewest preset ingredients (the switch off: `crop` before `crop+diverse`). A
    family varying one numeric param (the sample fraction) is ordered by it instead."""
    families: list[list[Configuration]] = []
    for config in sorted(configs, key=lambda c: (c.name.count("+"), c.name)):
        for family in families:
            varied = _varied(config, family[0])
            if family[0].split == config.split and varied and all(_in_sweep(k, keys) for k in varied):
                family.append(config)
                break
        else:
            families.append([config])
    families = [family for family in families if len(family) > 1]
    for family in families:
        if (key := _numeric_key(family)) is not None:
            family.sort(key=lambda c: value_of(c.runs[0], key))
    return families


def _numeric_key(family: list[Configuration]) -> str | None:
    swept = _swept(family)
    if len(swept) == 1 and all(_numeric(value_of(c.runs[0], swept[0])) for c in family):
        return swept[0]
    return None


def _values(config: Configuration, family: list[Configuration], keys: list[str], shown: int = 3) -> str:
    """The swept params where `config` differs from the family's first (all of them for the first), in the order
    of the sweep's `keys`, at most `shown` of them."""
    varied = _swept(family) if config is family[0] else _varied(config, family[0])
    order = sorted(varied, key=lambda v: (next(i for i, k in enumerate(keys) if _in_sweep(v, [k])), v))
    cells = [f"`{key}={short_value(value_of(config.runs[0], key))}`" for key in order]
    return ", ".join(cells[:shown]) + (f" and {len(cells) - shown} more" if len(cells) > shown else "")


def plot_sweep(name: str, families: list[list[Configuration]], metric: str, out) -> None:
    """One panel per family: a curve over a numeric param, bars otherwise; std over seeds as error bars, the base
    model as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(families), figsize=(4.6 * len(families), 3.6), squeeze=False)
    for ax, family in zip(axes[0], families, strict=True):
        means = [np.mean(c.values(metric)) if c.values(metric) else np.nan for c in family]
        errors = [np.std(c.values(metric), ddof=1) if len(c.values(metric)) > 1 else 0.0 for c in family]
        key = _numeric_key(family)
        if key is not None:
            xs = [value_of(c.runs[0], key) for c in family]
            ax.errorbar(xs, means, yerr=errors, marker="o", capsize=3)
            for x, y, c in zip(xs, means, family, strict=True):
                ax.annotate(f"{y:.4f} ({len(c.runs)})", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
            ax.set_xlabel(key)
        else:
            ax.bar(range(len(family)), means, yerr=errors, capsize=3, color=[COLORS[c.setting] for c in family])
            ax.set_xticks(range(len(family)), [f"{c.name} ({len(c.runs)})" for c in family], rotation=20, ha="right")
            ax.tick_params(axis="x", labelsize=7)
        base = get_dotted(family[0].runs[0].metrics.get("metrics/eval.json", {}), f"baseline.{metric}")
        if base is not None:
            ax.axhline(base, color="grey", linestyle="--", linewidth=1, label=f"base {base:.4f}")
            ax.legend(fontsize=7)
        finite = [m for m in means if not np.isnan(m)] + ([base] if base is not None else [])
        ax.set_ylim(min(finite) - 0.02, max(finite) + 0.02)
        ax.set_ylabel(f"{metric} ({family[0].split}), mean over seeds")
        shared = [part for part in family[0].name.split("+") if all(part in c.name.split("+") for c in family)]
        ax.set_title("+".join(shared) or "(no shared preset)", fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(name)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def sweep_section(
    configs: list[Configuration], sweeps: Mapping[str, list[str]], metric: str, figures
) -> tuple[list[str], dict[str, list[list[str]]]]:
    """Markdown and a figure (in the folder `figures`) per sweep that has a family; returns the lines and the
    families drawn, by sweep name."""
    lines, drawn = ["## Sweeps: configurations that differ only in the swept params", ""], {}
    lines += [
        f"Mean {metric} ± std over seeds (count). Δ is against the previous point of a numeric sweep (does the",
        "next step still pay?) and against the family's first configuration (the switch off) otherwise, on the",
        "seed-averaged per-query scores, with the paired randomization test's p-value.",
    ]
    for name, keys in sweeps.items():
        families = sweep_families(configs, keys)
        if not families:
            continue
        drawn[name] = [[c.name for c in family] for family in families]
        figure = f"sweep-{name}.png"
        plot_sweep(name, families, metric, figures / figure)
        lines += ["", f"### {name}", "", f"Params: `{'`, `'.join(keys)}`.", "", f"![{name}](figures/{figure})"]
        for family in families:
            numeric = _numeric_key(family) is not None
            lines += [
                "",
                f"| configuration ({family[0].split}) | params | seeds | {metric} | Δ (p) |",
                "|---|---|---|---|---|",
            ]
            for i, config in enumerate(family):
                against = family[i - 1] if numeric else family[0]
                versus = _versus(config, _scores(against, "student", metric), metric) if i else "—"
                if i:
                    versus += f" vs {against.name}"
                cells = [
                    config.name,
                    _values(config, family, keys),
                    _seeds(config),
                    _mean_std(config.values(metric)),
                    versus,
                ]
                lines.append("| " + " | ".join(cells) + " |")
    if not drawn:
        return [], {}
    missing = [name for name in sweeps if name not in drawn]
    if missing:
        lines += ["", "Sweeps without two comparable configurations yet: " + ", ".join(missing) + "."]
    return [*lines, ""], drawn
