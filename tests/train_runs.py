"""Train the runs described by a JSON file, one after the other, in however many processes `accelerate launch`
started; tests/test_distributed.py compares them with the same runs in one process.

    {"out": folder, "runs": {name: {"params": FitParams fields, "triples": path}}}

Each run first saves the gradient of its first batch (`<out>/<name>/gradients.pt`), then trains.
"""

import json
import sys
from pathlib import Path

import torch

from synthir.config import FitParams
from synthir.train import backward, setup, train


def first_batch_gradients(params: FitParams, triples: Path, out: Path) -> dict[str, torch.Tensor]:
    run = setup(params, triples, out / "gradient-ckpt")
    backward(run, run.schedule[0])
    model = run.accelerator.unwrap_model(run.model)
    return {name: p.grad.detach().cpu() for name, p in model.named_parameters() if p.grad is not None}


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    for name, run in spec["runs"].items():
        params, triples, out = FitParams(**run["params"]), Path(run["triples"]), Path(spec["out"]) / name
        gradients = first_batch_gradients(params, triples, out)
        if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
            out.mkdir(parents=True, exist_ok=True)
            torch.save(gradients, out / "gradients.pt")
        train(params, triples, out / "model", out / "live", out / "ckpt")


if __name__ == "__main__":
    main()
