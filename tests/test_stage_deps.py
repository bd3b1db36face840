"""DVC's promise: a stage reruns when any code it runs changes. The closure comes from the code (ast), not a list."""

import pytest

from tests.stage_deps import REPO, SRC, check, closure, code_of, imported_modules, pipeline, template_names


def _relative(paths) -> set[str]:
    return {p.relative_to(REPO).as_posix() for p in paths}


def test_every_stage_depends_on_exactly_the_code_it_runs():
    problems = {
        stage: {"missing": sorted(_relative(missing)), "never run": sorted(_relative(extra))}
        for stage, (missing, extra) in check(pipeline()).items()
        if missing or extra
    }
    assert problems == {}, "fix dvc.yaml's deps (`python -m tests.stage_deps` lists them)"


def test_the_closure_follows_lazy_imports_and_importlib_names():
    generate = _relative(closure(REPO / "stages" / "generate.py"))
    assert "src/synthir/llm/vllm.py" in generate  # chosen by name through importlib (make_backend)
    assert "src/synthir/llm/openai_compat.py" in generate
    assert "src/synthir/synth/__init__.py" in generate  # a package's __init__ runs on import
    triples = _relative(closure(REPO / "stages" / "triples.py"))
    assert "src/synthir/llm/judge.py" in triples  # imported inside a function, on the offline cross-encoder path
    assert "src/synthir/synth/verify.py" not in triples and "src/synthir/cli.py" not in triples
    assert "src/synthir/synth/verify.py" not in _relative(closure(REPO / "stages" / "align_judge.py"))


def test_small_closures_keep_reruns_small():
    """A change to the report, the LLM layer or generation must not retrain the model; a change to the model code
    (models.py, archive.py) must not rerun the stages that load no model."""
    train = _relative(code_of(REPO / "stages" / "train.py"))
    assert not {p for p in train if p.startswith(("src/synthir/llm", "src/synthir/synth", "src/synthir/prompts"))}
    assert "src/synthir/results/report.py" not in train and "src/synthir/cli.py" not in train
    assert "src/synthir/llm/base.py" not in _relative(code_of(REPO / "stages" / "align_retrieve.py"))
    # the params schema checks no model reference itself (stages that load a model pass models.check_reference)
    assert not {"src/synthir/models.py", "src/synthir/archive.py"} & _relative(closure(SRC / "synthir" / "stage.py"))
    report = _relative(code_of(REPO / "stages" / "report.py"))
    assert "src/synthir/models.py" not in report and "src/synthir/archive.py" not in report
    assert "src/synthir/models.py" not in _relative(code_of(REPO / "stages" / "download.py"))


def test_templates_are_found_from_literal_names():
    assert template_names(SRC / "synthir" / "align" / "preferences.py") == {"prefer_passage", "prefer_forced_choice"}
    assert template_names(SRC / "synthir" / "llm" / "judge.py") == {"verify_relevance"}
    judge = _relative(code_of(REPO / "stages" / "verify.py"))
    assert "src/synthir/prompts/judge/verify_relevance.txt" in judge
    assert not {p for p in judge if p.startswith("src/synthir/prompts/generate")}


def test_a_computed_template_name_cannot_hide_a_dependency(tmp_path):
    module = tmp_path / "computed.py"
    module.write_text("def f(kind):\n    return load_template(f'syntriever_{kind}')\n")
    with pytest.raises(AssertionError, match=r"computed.py:2: load_template needs a literal template name"):
        template_names(module)


def test_relative_imports_resolve():
    assert "synthir.beir" in imported_modules(SRC / "synthir" / "synth" / "pipeline.py")
    assert "synthir.llm.base" in imported_modules(SRC / "synthir" / "llm" / "cached.py")


def test_dvc_yaml_never_pastes_a_param_into_a_shell_command():
    for name, stage in pipeline().items():
        assert "accelerate launch" not in stage["cmd"], name
    text = (REPO / "dvc.yaml").read_text()
    assert "${train.launch}" not in text
