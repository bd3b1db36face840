"""report: results table and PNG plots across experiments (from `synthir export-experiments`)."""

import argparse
import json
from pathlib import Path

from synthir.errors import friendly_errors
from synthir.results.report import load_experiments, write_report
from synthir.stage import stage_params


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experiments", type=Path, required=True, help="`dvc exp show --json` output")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    report = stage_params("report").report
    runs = load_experiments(args.experiments)
    summary = write_report(runs, report.reference, report.sweeps, report.metrics, args.output, report.selected)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
