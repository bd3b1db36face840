"""download: the configured BEIR dataset as a validated folder (mirror, official URL, or a local path), with a
dev split held out of the train queries (dataset.dev_fraction) and recorded."""

import argparse

from synthir.data.download import download_stage
from synthir.errors import friendly_errors
from synthir.stage import stage_params


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", required=True)
    parser.add_argument("--splits", required=True, help="JSON record of the splits and the dev query ids")
    args = parser.parse_args()
    download_stage(stage_params("download").dataset, args.output, args.splits)


if __name__ == "__main__":
    raise SystemExit(main())
