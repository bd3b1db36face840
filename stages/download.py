"""download: the configured BEIR dataset as a validated folder (mirror, official URL, or a local path)."""

import argparse

from synthir.cli import friendly_errors
from synthir.config import load_params
from synthir.download import fetch_dataset


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    dataset = load_params().dataset
    fetch_dataset(dataset.name, args.output, dataset.path)


if __name__ == "__main__":
    raise SystemExit(main())
