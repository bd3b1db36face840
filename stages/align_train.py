"""align_train: continue training the stage-1 retriever on the LLM's preferences (run under `accelerate launch`)."""

import argparse
import json
from pathlib import Path

from synthir.align import training_params
from synthir.cli import friendly_errors
from synthir.config import load_params
from synthir.fileio import atomic_dir, write_json
from synthir.train import train


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="the stage-1 retriever")
    parser.add_argument("--preferences", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--live", type=Path, required=True, help="DVCLive folder")
    parser.add_argument("--checkpoints", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args()
    params = load_params()
    if not params.align.enabled:
        with atomic_dir(args.output) as folder:
            (folder / "README.md").write_text("Alignment is off (align.enabled: false): evaluate scores stage 1.\n")
        (args.live / "plots" / "metrics").mkdir(parents=True, exist_ok=True)  # the declared (empty) training curves
        write_json(args.metrics, {"enabled": False})
        return
    summary = train(
        training_params(params.align, params.train, args.model),
        args.preferences,
        args.output,
        args.live,
        args.checkpoints,
    )
    if summary:
        write_json(args.metrics, {"enabled": True, **summary})
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
