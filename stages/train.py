"""train: fine-tune the base retriever on the triples. It starts itself under `accelerate launch` with the
options of train.device, train.num_processes, train.num_machines and train.launch (an argument list, never a
shell); on several machines each one runs this stage with its rank and the main machine's address in the
environment (`synthir.stage`)."""

import argparse
import json
import sys
from pathlib import Path

from synthir.errors import friendly_errors
from synthir.models import check_reference
from synthir.stage import launched_by_accelerate, relaunch_under_accelerate, stage_params
from synthir.training.train import train_stage


@friendly_errors
def main() -> int | None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--triples", type=Path, required=True)
    parser.add_argument("--adapted", type=Path, required=True, help="the adapt stage's model (used when adapt is on)")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--live", type=Path, required=True, help="DVCLive folder")
    parser.add_argument("--checkpoints", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True, help="run summary: steps, samples/s, seconds")
    args = parser.parse_args()
    params = stage_params("train", check_model=check_reference)
    if not launched_by_accelerate():
        return relaunch_under_accelerate(params.train, __file__, sys.argv[1:])
    summary = train_stage(params, args.triples, args.adapted, args.output, args.live, args.checkpoints, args.metrics)
    if summary:  # the main process
        print(json.dumps(summary, indent=2))
    return None


if __name__ == "__main__":
    raise SystemExit(main())
