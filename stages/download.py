"""download: the configured BEIR dataset as a validated folder (mirror, official URL, or a local path), with a
dev split held out of the train queries (dataset.dev_fraction) and recorded."""

import argparse

from synthir.data.download import fetch_dataset
from synthir.data.splits import describe_splits
from synthir.errors import friendly_errors
from synthir.fileio import write_json
from synthir.stage import stage_params


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", required=True)
    parser.add_argument("--splits", required=True, help="JSON record of the splits and the dev query ids")
    args = parser.parse_args()
    dataset = stage_params("download").dataset
    folder = fetch_dataset(dataset.name, args.output, dataset.path, dataset.dev_fraction, dataset.dev_seed)
    record = {"dev_fraction": dataset.dev_fraction, "dev_seed": dataset.dev_seed, **describe_splits(folder)}
    write_json(args.splits, record)


if __name__ == "__main__":
    raise SystemExit(main())
