"""Run the study's configurations as DVC experiments, one per training seed (docs/study.md).

A configuration is a list of presets under study/ joined by '+', applied in order on top of the committed
params.yaml and study/protocol.yaml (dev split): `crop+frac25+attn0` is study/crop.yaml, study/frac25.yaml and
study/attn0.yaml. Each seed is one `dvc exp run -n <configuration>-s<seed> -S train.seed=<seed>`; what the seeds
share (download, sample, generate, verify, triples, baseline) comes from DVC's run cache after the first.
`--test` scores a configuration chosen on dev on the test split instead (its experiments end in `-test-s<seed>`).
`--export FILE` merges each finished run into FILE (`synthir export-experiments --merge`) as soon as it ends, so a
run survives the clone: experiments live in the clone's git refs, and a clone on a machine that goes away takes
them along; commit FILE.
Each run starts from the committed params.yaml (`git checkout HEAD -- params.yaml`: uncommitted edits are dropped,
staged ones too), so run it in a clean clone; the last configuration's params stay applied afterwards.

    python scripts/study.py --seeds 1,2,3 --export ../main/report/experiments.json supervised crop+frac25
    cd ../main && dvc repro report
"""

from __future__ import annotations

import argparse
import fcntl
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STUDY = ROOT / "study"
# From HEAD, not from the index: a `dvc exp run` killed mid-run leaves its params.yaml staged, and `git checkout --
# params.yaml` would hand those params (another configuration's) to the next run.
RESET_PARAMS = ["git", "checkout", "HEAD", "--", "params.yaml"]


def presets(configuration: str) -> list[Path]:
    paths = [STUDY / "protocol.yaml"] + [STUDY / f"{name}.yaml" for name in configuration.split("+")]
    missing = [str(p.relative_to(ROOT)) for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"error: {configuration}: no preset {', '.join(missing)}")
    return paths


def experiment_name(configuration: str, seed: int, test: bool) -> str:
    return f"{configuration}{'-test' if test else ''}-s{seed}"


def run(configuration: str, seed: int, test: bool, dry_run: bool) -> bool:
    name = experiment_name(configuration, seed, test)
    commands = [RESET_PARAMS]
    commands += [["synthir", "preset", str(p.relative_to(ROOT))] for p in presets(configuration)]
    overrides = ["-S", f"train.seed={seed}"] + (["-S", "evaluate.split=test"] if test else [])
    commands.append(["dvc", "exp", "run", "-n", name, *overrides])
    started = time.perf_counter()
    for command in commands:
        print("$", " ".join(command), flush=True)
        if not dry_run and subprocess.call(command, cwd=ROOT) != 0:
            print(f"{name}: failed after {time.perf_counter() - started:.0f} s", flush=True)
            return False
    print(f"{name}: done in {time.perf_counter() - started:.0f} s", flush=True)
    return True


def export(output: Path, dry_run: bool) -> bool:
    """Merge this clone's finished runs into `output`; a failure leaves the runs in the clone's refs."""
    command = ["synthir", "export-experiments", "--merge", "--output", str(output)]
    print("$", " ".join(command), flush=True)
    if dry_run or subprocess.call(command, cwd=ROOT) == 0:
        return True
    print(f"export to {output} failed; the runs stay in this clone: rerun the command above", flush=True)
    return False


def export_path(text: str) -> Path:
    """--export's file: absolute (the commands run in the clone's root), in an existing folder, not a folder."""
    path = Path(text).expanduser().resolve()
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no folder {path.parent}")
    if path.exists() and not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: not a file")
    return path


def hold_clone(root: Path = ROOT):
    """An exclusive lock on the clone, held until the process exits: a second study run in the same clone would
    rewrite params.yaml under the first, and DVC's run cache would record the first run's outputs under the second
    run's params (its stage locks do not cover params.yaml)."""
    path = root / ".dvc" / "tmp" / "study.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SystemExit(f"error: another scripts/study.py runs in {root}; wait for it, or use another clone") from None
    return handle


def _seeds(text: str) -> list[int]:
    try:
        return [int(seed) for seed in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds like 1,2,3 (got {text!r})") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configurations", nargs="+", help="presets of study/ joined by '+'")
    parser.add_argument("--seeds", type=_seeds, default=[1, 2, 3], help="training seeds, e.g. 1,2,3")
    parser.add_argument("--test", action="store_true", help="score on the test split (configurations chosen on dev)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--export", type=export_path, metavar="FILE", help="merge each finished run into FILE")
    args = parser.parse_args()
    for configuration in args.configurations:
        presets(configuration)  # every name checked before the first run
    lock = None if args.dry_run else hold_clone()  # noqa: F841 - held until exit
    failed = []
    for configuration in args.configurations:
        for seed in args.seeds:
            name = experiment_name(configuration, seed, args.test)
            if not run(configuration, seed, args.test, args.dry_run):
                failed.append(name)
            elif args.export and not export(args.export, args.dry_run):
                failed.append(f"{name} (its export)")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
