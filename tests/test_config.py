import pytest
import yaml

from synthir.config import load_params, model_references, parse_params
from synthir.errors import ConfigError
from synthir.models import check_reference
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
        (lambda p: p["evaluate"]["bm25"].update(stemmer="klingon"), "evaluate.bm25.stemmer: unknown stemmer"),
        (lambda p: p["evaluate"]["bm25"].update(stopwords="xx"), "evaluate.bm25.stopwords: unknown stopword list"),
        (
            lambda p: p["triples"]["negatives"].update(rank_from=50),
            r"triples.negatives: rank_from \(50\) must be below",
        ),
        (lambda p: p["train"].update(lr=float("inf")), "train.lr: Input should be a finite number"),
        (lambda p: p["train"].update(tau=float("nan")), "train.tau: Input should be a finite number"),
        (lambda p: p["train"].update(epochs=True), "train.epochs: Input should be a valid integer"),
        (lambda p: p["train"].update(batch_size="32"), "train.batch_size: Input should be a valid integer"),
        (lambda p: p["sample"].update(fraction="0.5"), "sample.fraction: Input should be a valid number"),
        (lambda p: p["align"].update(enabled="yes"), "align.enabled: Input should be a valid boolean"),
        (lambda p: p["generate"]["llm"].update(backend="openai"), r"generate.llm: base_url: missing \(required by"),
        (
            lambda p: p["generate"]["llm"].update(model="mistralai/Mistral-7B-Instruct-v0.3"),
            "generate.llm: model: 'mistralai/Mistral-7B-Instruct-v0.3' is not a GGUF file; the llamacpp backend",
        ),
        (
            lambda p: p["generate"]["llm"].update(backend="openai", base_url="localhost:8000/v1"),
            "generate.llm.base_url: 'localhost:8000/v1' is not an http",
        ),
        (
            lambda p: p["verify"]["judge"].update(backend="openai", base_url="http://host:port/v1"),
            "verify.judge.base_url: 'http://host:port/v1' is not a URL",
        ),
        (
            lambda p: p["train"].update(launch="--cpu; touch /tmp/x; true"),
            "train.launch: '--cpu;' is not an accelerate",
        ),
        (lambda p: p["train"].update(launch="--cpu $(touch /tmp/x)"), "train.launch: .* is not an accelerate option"),
        (lambda p: p["train"].update(launch="--cpu `id`"), "train.launch: '`id`' is not an accelerate option"),
        (lambda p: p["train"].update(launch="--cpu | tee x"), r"train.launch: '\|' is not an accelerate option"),
        (lambda p: p["train"].update(launch="--cpu 'a b'"), "train.launch: 'a b' is not an accelerate option"),
        (lambda p: p["train"].update(launch="--num_processes=2"), "train.launch: '--num_processes=2' is set by"),
        (lambda p: p["train"].update(loss="bt"), "train.loss: .*'mnrl', 'snn', 'marginmse' or 'listwise'"),
        (lambda p: p["train"].update(teacher_temperature=0), "train.teacher_temperature: Input should be greater"),
        (lambda p: p["train"].update(teacher_temperature=-0.05), "train.teacher_temperature: Input should be greater"),
        (lambda p: p["train"].update(teacher_temperature=11.0), "train.teacher_temperature: Input should be less than"),
        (lambda p: p["train"].update(teacher_temperature=float("nan")), "train.teacher_temperature: .*finite number"),
        (lambda p: p["train"].update(teacher_temperature=float("inf")), "train.teacher_temperature: .*finite number"),
        (lambda p: p["train"].update(teacher_temperature="0.05"), "train.teacher_temperature: .*valid number"),
        (lambda p: p["train"].update(teacher_temperature=None), "train.teacher_temperature: .*valid number"),
        (lambda p: p["train"].update(contrastive_weight=-0.5), "train.contrastive_weight: Input should be greater"),
        (lambda p: p["train"].update(contrastive_weight=101.0), "train.contrastive_weight: Input should be less than"),
        (lambda p: p["train"].update(contrastive_weight=float("nan")), "train.contrastive_weight: .*finite number"),
        (lambda p: p["train"].update(contrastive_weight=float("-inf")), "train.contrastive_weight: .*finite number"),
        (lambda p: p["train"].update(contrastive_weight=[1.0]), "train.contrastive_weight: .*valid number"),
        (lambda p: p["train"].update(contrastive_weight=True), "train.contrastive_weight: .*valid number"),
        (
            lambda p: p["train"].update(contrastive_weight=0.5),
            r"train: contrastive_weight adds mnrl to a distillation loss \(marginmse or listwise\); loss is mnrl",
        ),
        (
            lambda p: p["train"].update(loss="listwise", num_negatives=0),
            "train: loss listwise learns from a teacher's scores of negatives: num_negatives must be >= 1",
        ),
        (lambda p: p["train"].update(device="gpu"), "train.device: .*'cpu' or 'cuda'"),
        (lambda p: p["adapt"].update(method="simcse"), "adapt.method: .*'none' or 'tsdae'"),
        (lambda p: p["adapt"].update(deletion_ratio=1.0), "adapt.deletion_ratio: Input should be less than 1"),
        (
            lambda p: (p["adapt"].update(method="tsdae"), p["train"].update(keep_layers=2)),
            "adapt.method tsdae adapts a sentence-transformers encoder; train.pooling and train.keep_layers",
        ),
        (
            lambda p: p["generate"].update(prompts_dir="src/synthir/prompts/generat"),
            "generate.prompts_dir: .* not a folder",
        ),
        (lambda p: p["dataset"].update(path="/no/such/folder"), "dataset.path: '/no/such/folder' is not a folder"),
    ],
)
def test_bad_values_name_the_key(params, edit, message):
    edit(params)
    with pytest.raises(ConfigError, match=message) as error:
        parse_params(params, check_model=check_reference)
    assert str(error.value).startswith("params.yaml: ")


def test_model_references_are_found_by_key_and_checked_only_when_asked(params):
    """config cannot reach the model code: it marks the fields that name a model, and the caller checks them."""
    found = dict(model_references(parse_params(params)))
    assert found["train.base_model"] == params["train"]["base_model"]
    assert {"sample.model", "verify.gecko.model", "triples.teacher.model", "generate.llm.model"} <= set(found)
    assert "verify.round_trip.model" not in found  # a plain string: whatever its code loads
    params["train"].update(base_model="./no/such/dir")
    params["generate"]["llm"].update(backend="hf", model="org/no-such-model")  # an LLM's hub id: the backend's
    assert parse_params(params).train.base_model == "./no/such/dir"
    assert "generate.llm.model" not in dict(model_references(parse_params(params)))
    with pytest.raises(ConfigError) as error:
        parse_params(params, check_model=check_reference)
    assert str(error.value) == "params.yaml: train.base_model: './no/such/dir': no such file or folder"


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("sample:\n  fraction: 0.5\n  seed: [1,\n")
    with pytest.raises(ConfigError, match=r"params.yaml:\d+: invalid YAML"):
        load_params(path)


def test_launch_accepts_accelerate_options():
    from synthir.launch import launch_arguments

    assert launch_arguments("--cpu --num_processes=1") == ["--cpu", "--num_processes=1"]
    assert launch_arguments("--multi_gpu --num_processes 4 --mixed_precision bf16 --gpu_ids 0,1,2,3") == [
        "--multi_gpu",
        "--num_processes",
        "4",
        "--mixed_precision",
        "bf16",
        "--gpu_ids",
        "0,1,2,3",
    ]


def test_numbers_are_read_as_dvc_reads_them(tmp_path):
    """YAML 1.2 (ruamel, as DVC): `2e-5` is a number, not the string PyYAML would make of it."""
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text().replace("lr: 2.0e-5", "lr: 2e-5"))
    assert load_params(path).train.lr == 2e-5


def test_a_repeated_block_is_an_error_naming_its_line(tmp_path):
    path = tmp_path / "params.yaml"
    text = (REPO / "params.yaml").read_text()
    path.write_text(text + "\nsample:\n  fraction: 0.5\n")
    line = text.count("\n") + 2
    with pytest.raises(ConfigError, match=rf"params.yaml:{line}: duplicate key 'sample' \(DVC rejects the file too\)"):
        load_params(path)


def test_params_file_that_is_a_folder_or_not_utf8(tmp_path):
    (tmp_path / "folder.yaml").mkdir()
    with pytest.raises(ConfigError, match=r"folder.yaml: is a folder"):
        load_params(tmp_path / "folder.yaml")
    (tmp_path / "latin1.yaml").write_bytes(b"sample:\n  fraction: 0.5 # caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1.yaml: not UTF-8 text"):
        load_params(tmp_path / "latin1.yaml")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: p["adapt"].update(lr=1e30), r"adapt.lr: Input should be less than or equal to 1 \(got 1e\+30\)"),
        (lambda p: p["train"].update(lr=5.0), "train.lr: Input should be less than or equal to 1"),
        (lambda p: p["align"].update(lr=2.0), "align.lr: Input should be less than or equal to 1"),
        (lambda p: p["train"].update(tau=1e9), "train.tau: Input should be less than or equal to 10"),
        (lambda p: p["train"].update(weight_decay=50.0), "train.weight_decay: Input should be less than or equal to 1"),
        (lambda p: p["train"].update(seed=-1), "train.seed: Input should be greater than or equal to 0"),
        (lambda p: p["sample"].update(seed=2**32), "sample.seed: Input should be less than or equal to 4294967295"),
        (lambda p: p["dataset"].update(dev_seed=-5), "dataset.dev_seed: Input should be greater than or equal to 0"),
        (lambda p: p["train"].update(epochs=10**9), "train.epochs: Input should be less than or equal to 1000"),
        (lambda p: p["train"].update(batch_size=10**12), "train.batch_size: Input should be less than or equal to"),
        (lambda p: p["train"].update(max_seq_length=10**9), "train.max_seq_length: Input should be less than or"),
        (lambda p: p["adapt"].update(max_seq_length=10**9), "adapt.max_seq_length: Input should be less than or"),
        (lambda p: p["train"].update(num_processes=10**6), "train.num_processes: Input should be less than or"),
        (
            lambda p: p["generate"]["doc2query"].update(temperature=100.0),
            "generate.doc2query.temperature: Input should be less than or equal to 2",
        ),
        (
            lambda p: p["generate"]["query_negative"].update(max_tokens=10**9),
            "generate.query_negative.max_tokens: Input should be less than or equal to 131072",
        ),
        (
            lambda p: p["generate"]["doc2query"].update(density=10**6),
            "generate.doc2query.density: Input should be less than or equal to 100",
        ),
        (
            lambda p: p["generate"]["llm"]["options"].update(n_ctx=10**12),
            r"generate.llm.options: n_ctx: 1000000000000 is out of range \(expected 1 to 1048576\)",
        ),
        (
            lambda p: p["verify"]["judge"].setdefault("options", {}).update(n_parallel=0),
            r"verify.judge.options: n_parallel: 0 is out of range \(expected 1 to 1024\)",
        ),
        (
            lambda p: p["verify"]["judge"].setdefault("options", {}).update(kv_cache_gib=float("nan")),
            r"verify.judge.options: kv_cache_gib: nan is not a finite number",
        ),
        (
            lambda p: p["generate"]["llm"]["options"].update(kv_cache_gib=1e30),
            r"generate.llm.options: kv_cache_gib: 1e\+30 is out of range",
        ),
        (lambda p: p["evaluate"].update(depth=10**9), "evaluate.depth: Input should be less than or equal to 10000"),
        (lambda p: p["evaluate"]["bm25"].update(k1=1e300), "evaluate.bm25.k1: Input should be less than or equal"),
        (lambda p: p["verify"].update(relabel_margin=-1e300), "verify.relabel_margin: Input should be greater than"),
        (lambda p: p["verify"]["round_trip"].update(k=10**7), "verify.round_trip.k: Input should be less than or"),
        (
            lambda p: p["triples"]["negatives"].update(rank_to=10**9),
            "triples.negatives.rank_to: Input should be less than or equal to 10000",
        ),
        (lambda p: p["triples"]["negatives"].update(margin=-1.0), "triples.negatives.margin: Input should be greater"),
        (lambda p: p["align"].update(min_margin=1e9), "align.min_margin: Input should be less than or equal to 100"),
    ],
)
def test_numeric_params_have_ranges_named_by_key(params, edit, message):
    edit(params)
    with pytest.raises(ConfigError, match=message) as error:
        parse_params(params)
    assert str(error.value).count("\n") == 0 and str(error.value).startswith("params.yaml: ")


def _bomb(levels: int) -> str:
    """A "billion laughs" params file: 9**levels strings from a few hundred bytes."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return "bomb:\n" + "".join(f"  {line}\n" for line in lines) + f"train: {{lr: *a{levels}}}\n"


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(_bomb(6))  # 531,441 values; 9 levels (387 million) would exhaust memory
    with pytest.raises(ConfigError, match=r"^\S+params.yaml:7: this value holds more than 100,000 values once"):
        load_params(path)


@pytest.mark.parametrize("text", ["train: &t {lr: *t}\n", "train: &t [1, *t]\n"])
def test_a_recursive_yaml_alias_is_refused(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"params.yaml:1: an alias refers to a value that contains it"):
        load_params(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train: " + "[" * 5000 + "]" * 5000 + "\n", r"params.yaml(:\d+)?: nested too deeply \(at most 100 levels\)"),
        ("report:\n  selected:\n" + "  - x\n" * 300_000, r"params.yaml: larger than 1024 KiB"),
        ("train:\n  seed: " + "9" * 5000 + "\n", r"params.yaml:2: a number of 5,000 characters \(at most 100\)"),
    ],
    ids=["deep", "large", "long-number"],
)
def test_yaml_nested_too_deeply_too_large_or_with_endless_numbers_is_refused(tmp_path, text, message):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_params(path)


def test_echoed_values_and_keys_are_short_excerpts(params):
    params["train"].update(launch="A" * 100_000 + " ;", loss="x" * 100_000, **{"k" * 100_000: 1})
    params["dataset"].update(path="a" * 5000)  # longer than a file name may be
    with pytest.raises(ConfigError) as error:
        parse_params(params)
    lines = str(error.value).splitlines()
    assert len(lines) == 4 and max(map(len, lines)) < 250
    assert f"params.yaml: dataset.path: '{'a' * 58}… is not a folder" in lines
    assert f"params.yaml: train.'{'k' * 38}…: unknown key" in lines
    assert any(line.startswith("params.yaml: train.launch: 'AAAAAAAAAAAAAAAAAAA") for line in lines)
    assert any(line.startswith("params.yaml: train.loss: Input should be 'mnrl'") for line in lines)


def test_a_thousand_problems_are_listed_twenty_at_most(params):
    params["sample"].update({f"extra{i}": i for i in range(1000)})
    with pytest.raises(ConfigError) as error:
        parse_params(params)
    lines = str(error.value).splitlines()
    assert lines[0] == "params.yaml: sample.extra0: unknown key"
    assert len(lines) == 21 and lines[-1] == "params.yaml: ... and 980 more problems"


@pytest.mark.parametrize("value", ["2001-13-45", '!!float "abc"'])
def test_a_yaml_value_its_tag_cannot_build_is_one_error_naming_the_file(tmp_path, value):
    path = tmp_path / "params.yaml"
    path.write_text(f"dataset:\n  name: {value}\n")
    with pytest.raises(ConfigError, match=r"params.yaml: invalid value: "):
        load_params(path)
