"""Train the runs described by a JSON file, one after the other, in however many processes `accelerate launch`
started; tests/test_distributed.py compares them with the same runs in one process.

    {"out": folder, "runs": {name: {"params": FitParams fields, "triples": path}}, "count_builds": file}

Each run first saves the gradient of its first batch (`<out>/<name>/gradients.pt`), then trains. With
`count_builds`, a spy appends the process's rank to that file each time it builds an encoder into the cache. At
the end every process ends the process group as the training stages do, and writes whether one is left
(`<out>/ended-<rank>.json`).
"""

import json
import os
import sys
from pathlib import Path

import torch

import synthir.backbones as backbones
from synthir.config import FitParams
from synthir.training.builders import setup
from synthir.training.distributed import end_distributed
from synthir.training.train import backward, train

RANK = int(os.environ.get("RANK", "0"))  # set by torchrun, before the process group exists


def count_builds(record: Path) -> None:
    """A spy on the encoder cache: each build appends this process's rank to `record`."""
    build = backbones._write_encoder

    def counted(*args, **kwargs):
        with open(record, "a", encoding="utf-8") as handle:
            handle.write(f"{RANK}\n")
        return build(*args, **kwargs)

    backbones._write_encoder = counted


def first_batch_gradients(params: FitParams, triples: Path, out: Path) -> dict[str, torch.Tensor]:
    run = setup(params, triples, out / "gradient-ckpt")
    backward(run, run.schedule[0])
    model = run.accelerator.unwrap_model(run.model)
    return {name: p.grad.detach().cpu() for name, p in model.named_parameters() if p.grad is not None}


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    if "count_builds" in spec:
        count_builds(Path(spec["count_builds"]))
    for name, run in spec["runs"].items():
        params, triples, out = FitParams(**run["params"]), Path(run["triples"]), Path(spec["out"]) / name
        gradients = first_batch_gradients(params, triples, out)
        if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
            out.mkdir(parents=True, exist_ok=True)
            torch.save(gradients, out / "gradients.pt")
        train(params, triples, out / "model", out / "live", out / "ckpt")
    end_distributed()
    ended = {"rank": RANK, "group_left": torch.distributed.is_initialized()}
    (Path(spec["out"]) / f"ended-{RANK}.json").write_text(json.dumps(ended))


if __name__ == "__main__":
    main()
