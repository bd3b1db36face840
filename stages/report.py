"""report: results table and PNG plots across experiments (from `synthir export-experiments`)."""

import argparse
import json
from pathlib import Path

from synthir.errors import friendly_errors
from synthir.results.report import render_report
from synthir.stage import stage_params


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experiments", type=Path, required=True, help="`dvc exp show --json` output")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    params = stage_params("report").report
    summary = render_report(params, args.experiments, args.output)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
