"""`synthir` command line: ad-hoc evaluation and data preparation outside the DVC pipeline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError, excerpt, friendly_errors

if TYPE_CHECKING:
    from typing import TypeAlias

    from .config import EvaluateParams

    Commands: TypeAlias = argparse._SubParsersAction
    """The subcommands of a parser (what `add_subparsers` returns)."""


def _sidecars(output: Path) -> tuple[Path, Path]:
    """Per-query metrics and the TREC run, written beside the metrics JSON."""
    return output.with_name(output.stem + ".per_query.json"), output.with_name(output.stem + ".run.trec")


def _settings(args: argparse.Namespace):
    """The evaluation settings from the flags, validated like params.yaml; errors name the flag."""
    from pydantic import ValidationError

    from .config import Bm25Params, EvaluateParams

    if args.output is not None:  # checked before any work, so nothing is half-written
        for path in (args.output, *_sidecars(args.output)):
            if path.is_dir():
                raise ConfigError(f"--output: '{path}' is a folder; the metrics JSON and its sidecars are files")
    values = {"split": args.split, "depth": args.depth}
    try:
        if args.command == "bm25":
            values["bm25"] = Bm25Params(
                k1=args.k1, b=args.b, stemmer=args.stemmer or None, stopwords=args.stopwords or None
            )
        else:
            values.update(batch_size=args.batch_size, device=args.device, dtype=args.dtype, search=args.search)
            values.update(search_chunk_size=args.search_chunk_size, devices=args.devices)
        return EvaluateParams(**values)
    except ValidationError as error:
        raise ConfigError("; ".join(_flag_problem(item) for item in error.errors())) from None


def _flag_problem(item: dict) -> str:
    """One validation error, named by its flag."""
    from .config import describe_problem

    name = next(part for part in reversed(item["loc"]) if isinstance(part, str))  # a list item's flag: its list's
    return f"--{name.replace('_', '-')}: {describe_problem(item)}"


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from .devices import check_device
    from .evaluation.evaluate import evaluate_dense
    from .retrieval import Prefixes, encoding_devices, load_encoder

    settings = _settings(args)
    check_device(settings.device, settings.dtype, "--device", "--dtype")
    encoding_devices(settings.device, settings.devices, "--devices")
    if args.max_seq_length is not None and args.max_seq_length <= 0:
        raise ConfigError(f"--max-seq-length: must be a positive number of tokens (got {args.max_seq_length})")
    model = load_encoder(
        args.model, args.max_seq_length, settings.device, settings.dtype, length_key="--max-seq-length"
    )
    prefixes = Prefixes(args.query_prefix, args.passage_prefix)
    _report(evaluate_dense(args.model, args.data, settings, prefixes, args.max_seq_length, model), args.output)


def _cmd_bm25(args: argparse.Namespace) -> None:
    from .evaluation.evaluate import evaluate_bm25

    _report(evaluate_bm25(args.data, _settings(args)), args.output)


def _report(result, output: Path | None) -> None:
    import json

    if output:
        result.save(output, *_sidecars(output))
    print(json.dumps(result.summary(), indent=2))


def _cmd_download(args: argparse.Namespace) -> None:
    from .data.download import fetch_dataset

    fetch_dataset(args.name, args.output, args.path)


def build_parser() -> argparse.ArgumentParser:
    """The `synthir` parser: one subcommand per job, each group's added by its own step (in --help's order)."""
    parser = argparse.ArgumentParser(prog="synthir", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for add_commands in (
        _add_evaluation_commands,
        _add_download_command,
        _add_preset_command,
        _add_cache_commands,
        _add_generate_command,
        _add_compare_command,
        _add_hf_folder_command,
        _add_export_command,
    ):
        add_commands(commands)
    return parser


def _add_evaluation_commands(commands: Commands) -> None:
    """`evaluate` (a dense model) and `bm25`, with the evaluate block's defaults."""
    from .config import Bm25Params, EvaluateParams

    evaluation = EvaluateParams()
    dense = commands.add_parser("evaluate", help="evaluate a sentence-transformers model (exact search)")
    dense.add_argument("--model", required=True, help="hub id, local path or pkg:<package>/<path>")
    _add_split_flags(dense, evaluation)
    dense.add_argument("--batch-size", type=int, default=evaluation.batch_size)
    dense.add_argument("--query-prefix", default="")
    dense.add_argument("--passage-prefix", default="")
    dense.add_argument("--max-seq-length", type=int)
    dense.add_argument("--device", default=evaluation.device, help="cpu | cuda (explicit: scores differ by machine)")
    dense.add_argument("--dtype", default=evaluation.dtype, help="float32 | bfloat16 | float16")
    dense.add_argument("--search", default=evaluation.search, choices=["torch", "faiss"])
    dense.add_argument(
        "--search-chunk-size", type=int, default=evaluation.search_chunk_size, help="documents per search step"
    )
    dense.add_argument(
        "--devices", nargs="+", default=[], help="corpus encoding, a process each (default: every GPU with cuda)"
    )
    dense.set_defaults(func=_cmd_evaluate)

    bm25 = commands.add_parser("bm25", help="evaluate BM25 (bm25s, stemmed, title + text)")
    _add_split_flags(bm25, evaluation)
    defaults = Bm25Params()
    bm25.add_argument("--k1", type=float, default=defaults.k1)
    bm25.add_argument("--b", type=float, default=defaults.b)
    bm25.add_argument("--stemmer", default=defaults.stemmer, help="a Snowball language, or '' for none")
    bm25.add_argument("--stopwords", default=defaults.stopwords, help="a bm25s stopword list, or '' for none")
    bm25.set_defaults(func=_cmd_bm25)


def _add_split_flags(sub: argparse.ArgumentParser, evaluation: EvaluateParams) -> None:
    """What both evaluations read and write: the BEIR folder, the split, the depth, the metrics JSON."""
    sub.add_argument("--data", type=Path, required=True, help="a BEIR folder")
    sub.add_argument("--split", default=evaluation.split)
    sub.add_argument("--depth", type=int, default=evaluation.depth, help="hits kept per query (at least 100)")
    sub.add_argument(
        "--output",
        type=Path,
        help="metrics JSON; per-query metrics and the TREC run are written beside it",
    )


def _add_download_command(commands: Commands) -> None:
    download = commands.add_parser("download", help="fetch a BEIR dataset (or validate a local one)")
    download.add_argument("name")
    download.add_argument("--output", type=Path, required=True)
    download.add_argument("--path", type=Path, help="a local BEIR folder (custom dataset)")
    download.set_defaults(func=_cmd_download)


def _add_preset_command(commands: Commands) -> None:
    preset = commands.add_parser("preset", help="merge a preset (e.g. presets/gpu.yaml) into params.yaml")
    preset.add_argument("preset", type=Path)
    preset.add_argument("--params", type=Path, default=Path("params.yaml"))
    preset.set_defaults(func=_cmd_preset)


def _add_cache_commands(commands: Commands) -> None:
    """`cache export` and `cache import`: completions between the local cache and files."""
    cache = commands.add_parser("cache", help="move LLM completions between the local cache and files")
    actions = cache.add_subparsers(dest="action", required=True)
    export_file = actions.add_parser("export", help="write cached completions to a file (.gz: compressed)")
    export_file.add_argument(
        "file", nargs="?", default=None, help="default: llm-cache/completions.jsonl; - writes to standard output"
    )
    export_file.add_argument("--model", action="append", help="only completions by this model (repeatable)")
    export_file.add_argument("--since", help="only completions written at or after this UTC time (2026-11-26T07:00)")
    export_file.add_argument("--force", action="store_true", help="replace a file holding more completions")
    export_file.set_defaults(func=_cmd_cache_export)
    import_files = actions.add_parser(
        "import", help="add the completions of files, verified against their requests (all or nothing)"
    )
    import_files.add_argument("files", type=Path, nargs="*", help="default: every file in llm-cache/")
    import_files.add_argument(
        "--replace-local", action="store_true", help="a key cached locally with another text takes the file's"
    )
    import_files.set_defaults(func=_cmd_cache_import)


def _add_generate_command(commands: Commands) -> None:
    """`generate`: one shard of the generate stage's LLM work."""
    shard = commands.add_parser(
        "generate",
        help="the generate stage's LLM work for one shard of the sample, into the local cache (merge shards with "
        "`cache export` / `cache import`; `dvc repro` then makes no LLM call)",
    )
    shard.add_argument("--shard", default="0/1", help="i/N: shard i of N (0 <= i < N); default 0/1, the whole sample")
    shard.add_argument("--export", type=Path, help="write the shard's completions to this file (.gz: compressed)")
    shard.add_argument("--force", action="store_true", help="let --export replace a file holding more completions")
    shard.add_argument("--params", type=Path, default=Path("params.yaml"))
    shard.add_argument("--data", type=Path, help="the BEIR folder (default: data/raw/<dataset.name>)")
    shard.add_argument("--sample", type=Path, default=Path("data/sample/doc_ids.txt"), help="the sampled doc ids")
    shard.add_argument(
        "--completions", type=Path, default=Path("llm-cache"), help="committed completions, imported first"
    )
    shard.set_defaults(func=_cmd_generate)


def _add_compare_command(commands: Commands) -> None:
    versus = commands.add_parser("compare", help="paired significance test of two runs over the same queries")
    versus.add_argument("run_a", help="NAME[:SYSTEM] of an experiment, NAME,NAME,... (mean over seeds) or a JSON file")
    versus.add_argument("run_b", help="the same for the run compared with")
    versus.add_argument("--metric", default="ndcg@10", help="ndcg@10 or recall@100 (the committed per-query scores)")
    versus.add_argument("--experiments", type=Path, default=Path("report/experiments.json"))
    versus.add_argument("--permutations", type=int, default=10_000, help="sign flips of the randomization test")
    versus.set_defaults(func=_cmd_compare)


def _add_hf_folder_command(commands: Commands) -> None:
    folder = commands.add_parser(
        "hf-folder",
        help="print the Hugging Face folder of a model reference (a GGUF is converted once), for vllm serve",
    )
    folder.add_argument("model", help="a pkg: reference, a .gguf file, a Hugging Face folder or a hub id")
    folder.set_defaults(func=_cmd_hf_folder)


def _add_export_command(commands: Commands) -> None:
    export = commands.add_parser("export-experiments", help="save `dvc exp show --json` for the report stage")
    export.add_argument("--output", type=Path, default=Path("report/experiments.json"))
    export.add_argument("--merge", action="store_true", help="keep the runs already in --output (other clones')")
    export.set_defaults(func=_cmd_export)


def _cmd_generate(args: argparse.Namespace) -> None:
    """Run the generate stage's requests for one shard (the params, data and sample the stage reads), so that
    machines can each fill a cache with theirs; nothing but the cache (and --export) is written."""
    from .config import load_params
    from .fileio import require_file
    from .llm.cached import open_backend
    from .llm.completions import export_cache, import_committed
    from .models import check_reference
    from .synth.pipeline import generate_shard
    from .synth.shards import parse_shard

    shard = parse_shard(args.shard, "--shard")
    if args.export is not None and (args.export.is_dir() or args.export.is_symlink()):
        raise ConfigError(f"--export: '{args.export}' is a folder or a link; export to a plain file path")
    doc_ids = require_file(args.sample).read_text(encoding="utf-8").split()
    params = load_params(args.params, check_model=check_reference)
    data = args.data or Path("data/raw") / params.dataset.name
    import_committed(args.completions)
    backend = open_backend(params.generate.llm)
    backend.keys_used = set()
    with backend.cache:
        summary = generate_shard(params.generate, data, doc_ids, shard, backend)
        llm = summary["llm"]
        print(
            f"shard {shard}: {len(shard.select(doc_ids))} of {len(doc_ids)} documents, {summary['requests']} "
            f"requests ({summary['failed']} failed): {llm['calls']} LLM calls, {llm['cache_hits']} samples cached; "
            f"{len(backend.cache)} completions in {backend.cache.path}"
        )
        if args.export is None:
            return
        if not backend.keys_used:
            print(f"--export: shard {shard} holds no request; {args.export} not written")
            return
        done = export_cache(backend.cache, args.export, keys=backend.keys_used, force=args.force)
        print(f"{args.export}: {done.written} completions of shard {shard}")


def _cmd_export(args: argparse.Namespace) -> None:
    from .results.runs import export_experiments

    count = export_experiments(args.output, merge=args.merge)
    print(f"{args.output}: {count} experiments; `dvc repro report` renders report/README.md")


def _cmd_compare(args: argparse.Namespace) -> None:
    from .results.runs import load_experiments, scores_of
    from .results.stats import compare

    if args.permutations < 1:
        raise ConfigError(f"--permutations: must be at least 1 (got {args.permutations})")
    names = (args.run_a, args.run_b)
    needs_runs = any(not Path(spec.partition(":")[0]).is_file() for spec in names)
    runs = load_experiments(args.experiments) if needs_runs else []
    try:
        first, second = (scores_of(spec, runs, args.metric) for spec in names)
        if first.split and second.split and first.split != second.split:
            raise ConfigError(
                f"A ({args.run_a}) is scored on the split {excerpt(first.split)}, B ({args.run_b}) on "
                f"{excerpt(second.split)}: a paired test compares the same queries, so one split"
            )
        a, b = first.values, second.values
        result = compare(a, b, permutations=args.permutations)
    except (KeyError, ValueError) as error:
        raise ConfigError(str(error).strip("'\"")) from None
    only = len(a.keys() - b.keys()) + len(b.keys() - a.keys())
    print(
        f"{args.metric} over {result.queries} queries" + (f" ({only} scored by one run only, left out)" if only else "")
    )
    print(f"  A {args.run_a}: {result.mean_a:.4f}")
    print(f"  B {args.run_b}: {result.mean_b:.4f}")
    print(
        f"  A - B: {result.difference:+.4f}, {result.confidence:.0%} CI [{result.ci_low:+.4f}, {result.ci_high:+.4f}]"
    )
    print(f"  per query: A wins {result.wins}, loses {result.losses}, ties {result.ties}")
    randomization = f"paired randomization, {args.permutations} sign flips"
    print(f"  p = {result.p_value:.4f} ({randomization}); t-test p = {result.p_ttest:.4f}")


def _cmd_cache_export(args: argparse.Namespace) -> None:
    from .llm.completions import DEFAULT_FILE, export_cache
    from .llm.store import CompletionCache

    path = args.file or DEFAULT_FILE
    since = _utc_time(args.since) if args.since else 0.0
    with CompletionCache() as cache:
        done = export_cache(cache, path, args.model, since, force=args.force)
    left_out = f" ({done.unverifiable} cached without their request left out)" if done.unverifiable else ""
    print(f"{path}: {done.written} completions from {cache.path}{left_out}", file=sys.stderr if path == "-" else None)


def _utc_time(text: str) -> float:
    from datetime import datetime, timezone

    try:
        moment = datetime.fromisoformat(text.removesuffix("Z"))
    except ValueError:
        raise ConfigError(f"--since: expected a UTC time like 2026-11-26T07:00 (got {text!r})") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def _cmd_cache_import(args: argparse.Namespace) -> None:
    from .llm.completions import import_cache, import_folder
    from .llm.store import CompletionCache

    with CompletionCache() as cache:
        if args.files:
            reports = import_cache(cache, args.files, replace_local=args.replace_local)
        else:
            reports = import_folder(cache, replace_local=args.replace_local)
        for report in reports:
            print(report)
        print(f"{len(cache)} completions in {cache.path}")


def _cmd_preset(args: argparse.Namespace) -> None:
    from .presets import apply_preset

    apply_preset(args.preset, args.params)
    print(f"{args.params}: merged {args.preset}; run `dvc repro` (or `dvc exp run`)")


def _cmd_hf_folder(args: argparse.Namespace) -> None:
    from .llm.hf_export import hf_folder

    print(hf_folder(args.model))


@friendly_errors
def run(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
