#!/usr/bin/env bash
# Opt-in: rebuild xllamacpp (llama.cpp) for this CPU. The PyPI wheels target plain AVX2; a native build uses the
# host's AVX-512 / VNNI / BF16 kernels (benchmarks/bench_generate.py's `native` lever measures the gain). Same
# xllamacpp version as installed, from its source release on PyPI; ~6 min on 2 cores.
#
#   bash scripts/build_llamacpp_native.sh              # replace the wheel in .venv
#   bash scripts/build_llamacpp_native.sh DIR          # install into DIR instead (PYTHONPATH=DIR picks it)
#
# AMX is left out: ggml's AMX matmul crashed (SIGSEGV in ggml_backend_amx_mul_mat) on this project's Sapphire
# Rapids VMs with both bundled Qwen GGUFs. llguidance (needs crates.io) and the server's TLS (fetches BoringSSL)
# are off: synthir calls the server in-process.
set -euo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python
target=${1:-}
version=$("$python" -c "import importlib.metadata as m; print(m.version('xllamacpp'))")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m pip download --quiet --no-deps --no-binary :all: "xllamacpp==$version" -d "$work"
export CMAKE_ARGS="-DLLAMA_LLGUIDANCE=OFF -DLLAMA_BUILD_BORINGSSL=OFF -DGGML_NATIVE=ON \
-DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' -DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
"$python" -m pip wheel --quiet --no-deps "$work/xllamacpp-$version.tar.gz" -w "$work/wheel"
if [ -n "$target" ]; then
  "$python" -m pip install --quiet --no-deps --upgrade --target "$target" "$work"/wheel/*.whl
else
  "$python" -m pip install --quiet --no-deps --force-reinstall "$work"/wheel/*.whl
fi
PYTHONPATH=${target} "$python" -c "import xllamacpp; print('xllamacpp', xllamacpp.__file__); print(xllamacpp.get_system_info())"
