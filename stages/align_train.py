"""align_train: continue training the stage-1 retriever on the LLM's preferences. Like `train`, it starts itself
under `accelerate launch` with the train params' device, processes and options."""

import argparse
import json
import sys
from pathlib import Path

from synthir.align.training import align_train_stage
from synthir.errors import friendly_errors
from synthir.stage import launched_by_accelerate, relaunch_under_accelerate, stage_params


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
    if params.align.enabled and not launched_by_accelerate():  # alignment off writes its note without accelerate
        return relaunch_under_accelerate(params.train, __file__, sys.argv[1:])
    summary = align_train_stage(
        params, args.model, args.preferences, args.output, args.live, args.checkpoints, args.metrics
    )
    if summary:  # the main process
        print(json.dumps(summary, indent=2))
    return None


if __name__ == "__main__":
    raise SystemExit(main())
