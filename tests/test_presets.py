import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

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
    assert merged["generate"]["llm"]["options"] == {
        "tensor_parallel_size": 1,
        "gpu_memory_utilization": 0.9,
        "max_model_len": 4096,
    }
    assert yaml.safe_load(params.read_text())["verify"]["round_trip"]["query_prefix"] == "query: "  # e5's prefixes
    assert merged["generate"]["doc2query"]["few_shot"] == 2  # kept from params.yaml
    assert yaml.safe_load(params.read_text())["train"]["query_prefix"] == "query: "
    from synthir.config import load_params
    from synthir.stage import accelerate_arguments

    launch = accelerate_arguments(load_params(params).train)
    assert "--cpu" not in launch and launch[launch.index("--mixed_precision") + 1] == "bf16"
    assert "# cpu | cuda" in params.read_text()  # params.yaml's comments survive the merge


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("syntriever", {"train.batch_size": 60, "align.batch_size": 100, "align.method": "forced_choice"}),
        ("dagr", {"triples.negatives.method": "none", "verify.round_trip.enabled": False}),
        ("drg", {"triples.negatives.method": "llm", "report.metrics": ["ndcg@10", "p@10", "recall@100"]}),
        (
            "fast-cpu",
            {"generate.llm.backend": "vllm", "generate.llm.options": {"n_ctx": 2048}, "verify.score_queries": False},
        ),
    ],
)
def test_paper_presets_merge_into_valid_params(tmp_path, preset, expected):
    from synthir.config import load_params

    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    apply_preset(REPO / "presets" / f"{preset}.yaml", params)
    merged = load_params(params)
    for key, value in expected.items():
        got = merged
        for part in key.split("."):
            got = getattr(got, part)
        assert got == value, key


def test_invalid_preset_leaves_params_untouched(tmp_path):
    _refused_leaving_params_untouched(tmp_path, "bad.yaml", "sample:\n  fraction: 3\n", r"sample.fraction")


def test_preset_keeps_comments_and_layout_of_params(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    before = params.read_text()
    apply_preset(REPO / "presets" / "gpu.yaml", params)
    after = params.read_text()
    comments = [line.partition("#")[2] for line in before.splitlines() if "#" in line]
    lost = [c for c in comments if c not in after]
    # only the comments of the generator block, which the preset replaces whole (another backend)
    assert all(("openai" in c or "Qwen2.5" in c) for c in lost) and len(lost) <= 4, lost
    assert "fraction: 0.25       # nested:" in after  # the value replaced, its comment kept in place
    assert "sources: [train, doc2query, syntriever]" in after  # a flow list stays a flow list
    assert "path: null" in after and "\n\n" in after  # nulls spelt out, blank lines between blocks kept


def test_preset_output_is_readable_like_any_file(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    old = os.umask(0o022)
    try:
        apply_preset(REPO / "presets" / "gpu.yaml", params)
    finally:
        os.umask(old)
    assert stat.S_IMODE(params.stat().st_mode) == 0o644


def _params_with(tmp_path, name: str, presets: list[Path]) -> Path:
    """A copy of params.yaml with the presets applied in order."""
    params = tmp_path / f"{name}.yaml"
    shutil.copy(REPO / "params.yaml", params)
    for preset in presets:
        apply_preset(preset, params)
    return params


def _merged(tmp_path, name: str, presets: list[Path]) -> dict:
    return yaml.safe_load(_params_with(tmp_path, name, presets).read_text())


def test_every_study_configuration_merges_into_valid_params(tmp_path):
    from synthir.config import load_params

    for preset in sorted((REPO / "study").glob("*.yaml")):
        params = _params_with(tmp_path, "params", [REPO / "study" / "protocol.yaml", preset])
        assert load_params(params).evaluate.split == "dev", preset.name


def test_the_recommended_preset_is_the_studys_chosen_zero_label_configuration(tmp_path):
    """presets/new-corpus.yaml writes out the zero-label configuration of `report.selected` (chosen on dev), less
    the dev-split protocol."""
    from synthir.results.runs import flatten
    from synthir.results.study import ZERO_LABEL, setting_of

    selected = yaml.safe_load((REPO / "params.yaml").read_text())["report"]["selected"]
    merged = {
        name: _merged(tmp_path, "study", [REPO / "study" / f"{n}.yaml" for n in name.split("+")]) for name in selected
    }
    zero_label = [name for name, params in merged.items() if setting_of(flatten(params)) == ZERO_LABEL]
    assert len(zero_label) == 1, zero_label
    assert merged[zero_label[0]] == _merged(tmp_path, "preset", [REPO / "presets" / "new-corpus.yaml"])


@pytest.mark.parametrize("text", ["", "# only a comment\n", "null\n", "---\n", "{}\n"])
def test_an_empty_preset_is_an_error_not_merged(tmp_path, text):
    _refused_leaving_params_untouched(tmp_path, "empty.yaml", text, r"empty.yaml: empty, nothing to merge")


def _refused_leaving_params_untouched(tmp_path: Path, name: str, text: str, message: str) -> None:
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    before = params.read_text()
    preset = tmp_path / name
    preset.write_text(text)
    with pytest.raises(ConfigError, match=message):
        apply_preset(preset, params)
    assert params.read_text() == before


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- train\n- sample\n", r"list.yaml: expected a mapping of params blocks, got a list"),
        ("gpu\n", r"list.yaml: expected a mapping of params blocks, got a str"),
        ("trian:\n  epochs: 2\n", r"params.yaml \+ \S+list.yaml: trian: unknown key"),
        ("train:\n  epoch: 2\n", r"params.yaml \+ \S+list.yaml: train.epoch: unknown key"),
        ("train:\n  lr: 1.0e+30\n", r"params.yaml \+ \S+list.yaml: train.lr: Input should be less than or equal to 1"),
    ],
)
def test_a_preset_that_is_not_a_mapping_of_known_blocks_is_refused(tmp_path, text, message):
    _refused_leaving_params_untouched(tmp_path, "list.yaml", text, message)


def test_an_alias_bomb_preset_is_refused_and_params_untouched(tmp_path):
    """A 518-byte preset whose aliases expand to 9**6 (here) or 9**9 (the red team's) values."""
    from tests.test_config import _bomb

    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    before = params.read_text()
    preset = tmp_path / "bomb.yaml"
    preset.write_text(_bomb(6))
    done = subprocess.run(
        [sys.executable, "-m", "synthir.cli", "preset", str(preset), "--params", str(params)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1].startswith(f"error: {preset}:7: this value holds more than 100,000 values")
    assert params.read_text() == before


def llm_blocks(node: object, path: str = ""):
    """(key path, block) of every LLM block (one with a `backend`) in a parsed preset."""
    if isinstance(node, dict):
        if "backend" in node:
            yield path, node
        for key, value in node.items():
            yield from llm_blocks(value, f"{path}.{key}".lstrip("."))


# SciFact's longest rendered prompt in llm-cache/ is 1,055 tokens; the GPU presets generate up to 256 more.
LONGEST_REQUEST = 1_055 + 256


@pytest.mark.parametrize("preset", sorted(p.stem for p in (REPO / "presets").glob("*.yaml")))
def test_every_local_engine_in_a_preset_has_a_context_that_fits_both_the_prompts_and_the_card(preset):
    """vLLM sizes its KV cache for the model's whole context unless told: Llama-3.1-8B's 131,072 tokens need 16 GiB
    for one sequence (128 KiB per token), more than a 40 GB card has left after the weights."""
    kv_bytes_per_token = 2 * 32 * 8 * 128 * 2  # K and V x layers x KV heads x head dim x bf16 (Llama-3.1-8B)
    for path, block in llm_blocks(yaml.safe_load((REPO / "presets" / f"{preset}.yaml").read_text())):
        if block["backend"] not in ("vllm", "llamacpp"):
            continue
        options = block.get("options") or {}
        context = options.get("max_model_len", options.get("n_ctx"))
        assert context is not None, f"{preset}: {path}.options sets no max_model_len"
        assert LONGEST_REQUEST <= context <= 8192, path
        assert context * kv_bytes_per_token <= 2**30, path  # a sequence's KV cache within 1 GiB
