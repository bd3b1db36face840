"""train: fine-tune the base retriever on the triples (run under `accelerate launch`)."""

import argparse
import json
from pathlib import Path

from synthir.cli import friendly_errors
from synthir.config import load_params
from synthir.fileio import write_json
from synthir.train import train


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--triples", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--live", type=Path, required=True, help="DVCLive folder")
    parser.add_argument("--checkpoints", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True, help="run summary: steps, samples/s, seconds")
    args = parser.parse_args()
    summary = train(load_params().train, args.triples, args.output, args.live, args.checkpoints)
    if summary:  # the main process
        write_json(args.metrics, summary)
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
