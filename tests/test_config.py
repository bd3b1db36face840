import pytest
import yaml

from synthir.config import load_params, parse_params
from synthir.errors import ConfigError
from tests.conftest import REPO


@pytest.fixture
def params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repository_params_are_valid():
    params = load_params(REPO / "params.yaml")
    assert 0 < params.sample.fraction <= 1 and params.train.base_model.startswith("pkg:")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: p["sample"].update(fraction=1.5), "sample.fraction: Input should be less than or equal to 1"),
        (lambda p: p["sample"].update(fraction=0), "sample.fraction: Input should be greater than 0"),
        (lambda p: p["sample"].update(fration=0.5), "sample.fration: unknown key"),
        (lambda p: p.update(extra_block={}), "extra_block: unknown key"),
        (lambda p: p["train"].pop("base_model"), r"train.base_model: missing \(required\)"),
        (lambda p: p["train"].update(base_model="pkg:no_such_package/model"), "package folder 'no_such_package'"),
        (lambda p: p["train"].update(base_model="./no/such/dir"), "train.base_model: .*no such file or folder"),
        (lambda p: p["evaluate"].update(depth=10), "evaluate.depth: Input should be greater than or equal to 100"),
        (lambda p: p["evaluate"]["bm25"].update(b=2), "evaluate.bm25.b"),
    ],
)
def test_bad_values_name_the_key(params, edit, message):
    edit(params)
    with pytest.raises(ConfigError, match=message) as error:
        parse_params(params)
    assert str(error.value).startswith("params.yaml: ")


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("sample:\n  fraction: 0.5\n  seed: [1,\n")
    with pytest.raises(ConfigError, match=r"params.yaml:\d+: invalid YAML"):
        load_params(path)
