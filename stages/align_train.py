"""align_train: continue training the stage-1 retriever on the LLM's preferences. Like `train`, it starts itself
under `accelerate launch` with the train params' device, processes and options."""

import argparse
import json
import sys
from pathlib import Path

from synthir.align.candidates import training_params
from synthir.errors import friendly_errors
from synthir.fileio import atomic_dir, write_json
from synthir.stage import launched_by_accelerate, relaunch_under_accelerate, stage_params
from synthir.training.train import end_distributed, train, write_empty_curves


@friendly_errors
def main() -> int | None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="the stage-1 retriever")
    parser.add_argument("--preferences", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--live", type=Path, required=True, help="DVCLive folder")
    parser.add_argument("--checkpoints", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args()
    params = stage_params("align_train")
    if not params.align.enabled:
        with atomic_dir(args.output) as folder:
            (folder / "README.md").write_text("Alignment is off (align.enabled: false): evaluate scores stage 1.\n")
        write_empty_curves(args.live)  # the declared training curves, with no steps
        write_json(args.metrics, {"enabled": False})
        return None
    if not launched_by_accelerate():
        return relaunch_under_accelerate(params.train, __file__, sys.argv[1:])
    summary = train(
        training_params(params.align, params.train, args.model),
        args.preferences,
        args.output,
        args.live,
        args.checkpoints,
        params.dataset.name,
    )
    end_distributed()
    if summary:
        write_json(args.metrics, {"enabled": True, **summary})
        print(json.dumps(summary, indent=2))
    return None


if __name__ == "__main__":
    raise SystemExit(main())
