import shutil

import pytest
import yaml

from synthir.errors import ConfigError
from synthir.presets import apply_preset, merge
from tests.conftest import REPO


def test_merge_overlays_nested_blocks_but_replaces_backend_blocks():
    assert merge({"a": {"b": 1, "c": 2}, "d": [1]}, {"a": {"b": 3}, "d": [2]}) == {"a": {"b": 3, "c": 2}, "d": [2]}
    llm = {"backend": "llamacpp", "options": {"n_ctx": 2048}}
    assert merge({"llm": llm}, {"llm": {"backend": "vllm"}}) == {"llm": {"backend": "vllm"}}


def test_gpu_preset_merges_into_a_valid_params_file(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    merged = apply_preset(REPO / "presets" / "gpu.yaml", params)
    assert merged["generate"]["llm"]["options"] == {"tensor_parallel_size": 1, "gpu_memory_utilization": 0.9}
    assert merged["generate"]["doc2query"]["few_shot"] == 2  # kept from params.yaml
    assert yaml.safe_load(params.read_text())["train"]["query_prefix"] == "query: "


def test_invalid_preset_leaves_params_untouched(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    before = params.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("sample:\n  fraction: 3\n")
    with pytest.raises(ConfigError, match=r"sample.fraction"):
        apply_preset(bad, params)
    assert params.read_text() == before
