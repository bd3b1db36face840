"""`synthir` command line: ad-hoc evaluation and data preparation outside the DVC pipeline."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from .errors import SynthirError


def friendly_errors(main: Callable[..., int | None]) -> Callable[..., int]:
    """Print a SynthirError as one line and exit 1, instead of a traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            return main(*args, **kwargs) or 0
        except SynthirError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1

    return wrapper


def _sidecar(output: Path, suffix: str) -> Path:
    return output.with_name(output.stem + suffix)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from .evaluate import evaluate_dense
    from .retrieval import Prefixes

    result = evaluate_dense(
        args.model,
        args.data,
        split=args.split,
        batch_size=args.batch_size,
        prefixes=Prefixes(args.query_prefix, args.passage_prefix),
        max_seq_length=args.max_seq_length,
        depth=args.depth,
        dtype=args.dtype,
        search=args.search,
    )
    _report(result, args.output)


def _cmd_bm25(args: argparse.Namespace) -> None:
    from .evaluate import evaluate_bm25
    from .retrieval import Bm25Settings

    settings = Bm25Settings(args.k1, args.b, args.stemmer or None, args.stopwords or None)
    _report(evaluate_bm25(args.data, args.split, args.depth, settings), args.output)


def _report(result, output: Path | None) -> None:
    import json

    if output:
        result.save(output, _sidecar(output, ".per_query.json"), _sidecar(output, ".run.trec"))
    print(json.dumps(result.summary(), indent=2))


def _cmd_download(args: argparse.Namespace) -> None:
    from .download import fetch_dataset

    fetch_dataset(args.name, args.output, args.path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synthir", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--data", type=Path, required=True, help="a BEIR folder")
        sub.add_argument("--split", default="test")
        sub.add_argument("--depth", type=int, default=100, help="hits kept per query")
        sub.add_argument(
            "--output",
            type=Path,
            help="metrics JSON; per-query metrics and the TREC run are written beside it",
        )

    dense = commands.add_parser("evaluate", help="evaluate a sentence-transformers model (exact search)")
    dense.add_argument("--model", required=True, help="hub id, local path or pkg:<package>/<path>")
    common(dense)
    dense.add_argument("--batch-size", type=int, default=16)
    dense.add_argument("--query-prefix", default="")
    dense.add_argument("--passage-prefix", default="")
    dense.add_argument("--max-seq-length", type=int)
    dense.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    dense.add_argument("--search", default="torch", choices=["torch", "faiss"])
    dense.set_defaults(func=_cmd_evaluate)

    bm25 = commands.add_parser("bm25", help="evaluate BM25 (bm25s, stemmed, title + text)")
    common(bm25)
    bm25.add_argument("--k1", type=float, default=1.5)
    bm25.add_argument("--b", type=float, default=0.75)
    bm25.add_argument("--stemmer", default="english", help="a Snowball language, or '' for none")
    bm25.add_argument("--stopwords", default="en", help="a bm25s stopword list, or '' for none")
    bm25.set_defaults(func=_cmd_bm25)

    download = commands.add_parser("download", help="fetch a BEIR dataset (or validate a local one)")
    download.add_argument("name")
    download.add_argument("--output", type=Path, required=True)
    download.add_argument("--path", type=Path, help="a local BEIR folder (custom dataset)")
    download.set_defaults(func=_cmd_download)
    preset = commands.add_parser("preset", help="merge a preset (e.g. presets/gpu.yaml) into params.yaml")
    preset.add_argument("preset", type=Path)
    preset.add_argument("--params", type=Path, default=Path("params.yaml"))
    preset.set_defaults(func=_cmd_preset)
    export = commands.add_parser("export-experiments", help="save `dvc exp show --json` for the report stage")
    export.add_argument("--output", type=Path, default=Path("report/experiments.json"))
    export.set_defaults(func=_cmd_export)
    return parser


def _cmd_export(args: argparse.Namespace) -> None:
    from .report import export_experiments

    count = export_experiments(args.output)
    print(f"{args.output}: {count} experiments; `dvc repro report` renders report/README.md")


def _cmd_preset(args: argparse.Namespace) -> None:
    from .presets import apply_preset

    apply_preset(args.preset, args.params)
    print(f"{args.params}: merged {args.preset}; run `dvc repro` (or `dvc exp run`)")


@friendly_errors
def run(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
