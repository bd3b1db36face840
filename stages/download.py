"""download: the configured BEIR dataset as a validated folder (mirror, official URL, or a local path)."""

import argparse

from synthir.download import fetch_dataset
from synthir.errors import friendly_errors
from synthir.stage import stage_params


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    dataset = stage_params("download").dataset
    fetch_dataset(dataset.name, args.output, dataset.path)


if __name__ == "__main__":
    raise SystemExit(main())
