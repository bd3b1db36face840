import hashlib
import http.server
import io
import re
import struct
import threading
import zipfile
import zlib
from functools import partial
from pathlib import Path

import pytest

from synthir.archive import safe_extract
from synthir.data import download
from synthir.data.download import REGISTRY, Source, fetch_dataset
from synthir.errors import ChecksumError, DataError, UnsafeArchiveError
from tests.conftest import write_beir


def _zip_folder(folder: Path, archive: Path, prefix: str) -> str:
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zipped.write(path, f"{prefix}/{path.relative_to(folder)}")
    return hashlib.md5(archive.read_bytes()).hexdigest()


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir()) if parent.exists() else []


@pytest.fixture
def tiny_registered(tmp_path, monkeypatch, beir_dir):
    """A registry entry 'tiny' whose official zip is the tiny folder zipped like BEIR does."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    md5 = _zip_folder(beir_dir, mirror / "tiny.zip", "tiny")
    monkeypatch.setitem(REGISTRY, "tiny", Source(md5))
    return mirror


@pytest.mark.parametrize(
    ("member", "message"),
    [
        ("../evil", "climbs out"),
        ("/etc/evil", "absolute path"),
        ("a/../../evil", "climbs out"),
        ("C:/evil", "absolute"),
    ],
)
def test_unsafe_members_are_rejected_before_writing(tmp_path, member, message):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("good.txt", "fine")
        zipped.writestr(member, "evil")
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match=message):
        safe_extract(archive, dest)
    assert not dest.exists()
    assert not (tmp_path / "evil").exists()


def test_symlink_member_is_rejected(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        info = zipfile.ZipInfo("link")
        info.external_attr = 0o120777 << 16
        zipped.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        safe_extract(archive, tmp_path / "out")


def test_a_zip_bomb_is_refused_before_anything_is_written(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("corpus.jsonl", b"\0" * (8 << 20))  # 8 MiB of zeros packs into ~8 KiB
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match=r"bomb.zip: inflates \d+x .* more than the 200x allowed"):
        safe_extract(archive, dest)
    assert not dest.exists()
    with pytest.raises(UnsafeArchiveError, match=r"inflates to 8,388,608 bytes, more than the 1,000,000 allowed"):
        safe_extract(archive, dest, max_total=1_000_000, max_ratio=10_000)
    assert not dest.exists()
    safe_extract(archive, dest, max_ratio=10_000)  # within both bounds
    assert (dest / "corpus.jsonl").stat().st_size == 8 << 20


def _understated_zip(path: Path, data: bytes, declared: int, crc_of: bytes) -> Path:
    """A zip of one member 'a.txt' holding `data` whose headers (local and central) declare `declared` bytes and
    the CRC-32 of `crc_of`."""
    with zipfile.ZipFile(path, "w") as zipped:
        zipped.writestr("a.txt", data)
    raw = bytearray(path.read_bytes())
    central = raw.find(b"PK\x01\x02")
    for crc_at, size_at in ((14, 22), (central + 16, central + 24)):  # local header, central directory entry
        struct.pack_into("<I", raw, crc_at, zlib.crc32(crc_of))
        struct.pack_into("<I", raw, size_at, declared)
    path.write_bytes(raw)
    return path


def test_a_member_larger_than_it_declares_is_refused_and_removed(tmp_path, monkeypatch):
    """The streaming guard, alone: CPython's zipfile never reads past a member's declared size (see the next
    test), so a reader that yields what the member really holds stands in for it."""
    archive = _understated_zip(tmp_path / "liar.zip", b"x" * 1000, 10, b"x" * 1000)
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, info, *args, **kwargs: io.BytesIO(b"x" * 1000))
    with pytest.raises(UnsafeArchiveError, match=rf"^{re.escape(str(archive))}: member 'a.txt' inflates past its"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_header_that_understates_a_member_fails_its_crc_check_and_is_removed(tmp_path):
    archive = _understated_zip(tmp_path / "liar.zip", b"x" * 1000, 10, b"x" * 1000)
    with pytest.raises(UnsafeArchiveError, match=r"liar.zip: not a valid zip archive \(Bad CRC-32 for file 'a.txt'\)$"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_zipfile_never_reads_past_a_declared_size(tmp_path):
    """So the declared sizes that `safe_extract` checks bound what it writes, whatever the data holds."""
    archive = _understated_zip(tmp_path / "liar.zip", b"x" * 1000, 10, b"x" * 10)
    safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "a.txt").read_bytes() == b"x" * 10


def test_mirror_zip_is_verified_and_unpacked(tmp_path, monkeypatch, tiny_registered):
    monkeypatch.setenv("SYNTHIR_DATA_MIRROR", str(tiny_registered))
    dest = fetch_dataset("tiny", tmp_path / "raw" / "tiny")
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        "corpus.jsonl",
        "qrels/test.tsv",
        "queries.jsonl",
    ]
    assert _leftovers(tmp_path / "raw") == ["tiny"]


def test_mirror_zip_checksum_mismatch_writes_nothing(tmp_path, monkeypatch, tiny_registered):
    monkeypatch.setitem(REGISTRY, "tiny", Source("0" * 32))
    monkeypatch.setenv("SYNTHIR_DATA_MIRROR", str(tiny_registered))
    with pytest.raises(ChecksumError, match=r"tiny.zip: md5 is [0-9a-f]{32}, expected 0{32}"):
        fetch_dataset("tiny", tmp_path / "raw" / "tiny")
    assert _leftovers(tmp_path / "raw") == []


def test_mirror_folder_per_file_sha256(tmp_path, monkeypatch, beir_dir):
    mirror = tmp_path / "mirror"
    write_beir(mirror / "tiny")
    good = {n: hashlib.sha256((mirror / "tiny" / n).read_bytes()).hexdigest() for n in ["corpus.jsonl"]}
    monkeypatch.setitem(REGISTRY, "tiny", Source("unused", good))
    monkeypatch.setenv("SYNTHIR_DATA_MIRROR", str(mirror))
    assert (fetch_dataset("tiny", tmp_path / "a") / "qrels" / "test.tsv").exists()
    monkeypatch.setitem(REGISTRY, "tiny", Source("unused", {"corpus.jsonl": "f" * 64}))
    with pytest.raises(ChecksumError, match=r"corpus.jsonl: sha256 is"):
        fetch_dataset("tiny", tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_shared_scifact_through_the_mirror(tmp_path, monkeypatch, shared_beir):
    monkeypatch.setenv("SYNTHIR_DATA_MIRROR", str(shared_beir))
    dest = fetch_dataset("scifact", tmp_path / "scifact")
    for name, sha in REGISTRY["scifact"].files.items():
        assert hashlib.sha256((dest / name).read_bytes()).hexdigest() == sha


def test_invalid_custom_folder_leaves_no_output(tmp_path, beir_dir):
    (beir_dir / "queries.jsonl").write_text('{"_id": "q1", "text": "ok"}\n{"_id": "q2"\n')
    with pytest.raises(DataError, match=r"queries.jsonl:2: malformed JSON"):
        fetch_dataset("custom", tmp_path / "raw" / "custom", beir_dir)
    assert _leftovers(tmp_path / "raw") == []


def test_failed_refetch_keeps_the_previous_output(tmp_path, beir_dir):
    dest = fetch_dataset("custom", tmp_path / "custom", beir_dir)
    before = (dest / "corpus.jsonl").read_bytes()
    (beir_dir / "corpus.jsonl").write_text("{broken\n")
    with pytest.raises(DataError, match=rf"^{re.escape(str(beir_dir))}/corpus.jsonl:1: malformed JSON"):
        fetch_dataset("custom", dest, beir_dir)
    assert (dest / "corpus.jsonl").read_bytes() == before


def test_unknown_dataset_and_empty_mirror(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"unknown dataset 'nope'.*dataset.path"):
        fetch_dataset("nope", tmp_path / "x")
    monkeypatch.setenv("SYNTHIR_DATA_MIRROR", str(tmp_path))
    with pytest.raises(DataError, match=r"holds neither scifact/ nor scifact.zip"):
        fetch_dataset("scifact", tmp_path / "x")


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server standing in for the BEIR download host."""
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_over_http_verifies_and_caches(tmp_path, monkeypatch, http_server, tiny_registered):
    root, url = http_server
    (root / "tiny.zip").write_bytes((tiny_registered / "tiny.zip").read_bytes())
    monkeypatch.delenv("SYNTHIR_DATA_MIRROR", raising=False)
    monkeypatch.setenv("SYNTHIR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(download, "BEIR_URL", url + "/{name}.zip")
    assert (fetch_dataset("tiny", tmp_path / "out") / "corpus.jsonl").exists()
    assert (tmp_path / "cache" / "downloads" / "tiny.zip").exists()

    (root / "tiny.zip").write_bytes(b"tampered")
    (tmp_path / "cache" / "downloads" / "tiny.zip").unlink()
    with pytest.raises(ChecksumError, match="md5 is"):
        fetch_dataset("tiny", tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
    assert _leftovers(tmp_path / "cache" / "downloads") == []


def test_download_failure_names_the_mirror_setting(tmp_path, monkeypatch, tiny_registered):
    monkeypatch.delenv("SYNTHIR_DATA_MIRROR", raising=False)
    monkeypatch.setenv("SYNTHIR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(download, "BEIR_URL", "http://127.0.0.1:9/{name}.zip")
    with pytest.raises(DataError, match=r"download failed.*SYNTHIR_DATA_MIRROR"):
        fetch_dataset("tiny", tmp_path / "out")


def test_a_bad_file_is_named_where_the_user_has_it(tmp_path, beir_dir):
    with (beir_dir / "corpus.jsonl").open("a") as handle:
        handle.write('{"_id": "d9", "text": "bad \\ud800"}\n')
    with pytest.raises(DataError, match=rf"^{beir_dir}/corpus.jsonl:4: text is not valid Unicode"):
        fetch_dataset("mine", tmp_path / "raw" / "mine", beir_dir)
    assert _leftovers(tmp_path / "raw") == []


def test_a_corpus_alone_is_fetched_without_qrels(tmp_path, beir_dir):
    (beir_dir / "queries.jsonl").unlink()
    for qrels in (beir_dir / "qrels").iterdir():
        qrels.unlink()
    dest = fetch_dataset("mine", tmp_path / "raw" / "mine", beir_dir)
    assert sorted(p.name for p in dest.iterdir()) == ["corpus.jsonl"]


def test_a_bad_file_inside_a_zip_is_named_by_the_zip(tmp_path, monkeypatch, beir_dir):
    with (beir_dir / "corpus.jsonl").open("a") as handle:
        handle.write('{"_id": "d 9", "text": "an id with a space"}\n')
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    monkeypatch.setitem(REGISTRY, "tiny", Source(_zip_folder(beir_dir, mirror / "tiny.zip", "tiny")))
    monkeypatch.setenv("SYNTHIR_DATA_MIRROR", str(mirror))
    with pytest.raises(DataError, match=rf"^{mirror}/tiny.zip:tiny/corpus.jsonl:4: _id 'd 9' contains whitespace"):
        fetch_dataset("tiny", tmp_path / "raw" / "tiny")
    assert _leftovers(tmp_path / "raw") == []


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("stranger", "named"),
    [
        ("notes.txt", "'notes.txt'"),
        ("qrels/notes.md", "'qrels/notes.md'"),
        ("qrels/extra.tsv/inner.txt", "'qrels/extra.tsv'"),  # a folder where the dataset has a file
        ("a\nb" + "x" * 200, "'a\\\\nb" + "x" * 54 + "…"),  # one line, cut to an excerpt
    ],
)
def test_download_refuses_a_folder_it_did_not_write_and_deletes_nothing(tmp_path, beir_dir, stranger, named):
    dest = write_beir(tmp_path / "mine")
    (dest / stranger).parent.mkdir(parents=True, exist_ok=True)
    (dest / stranger).write_text("keep me")
    before = _tree(dest)
    with pytest.raises(DataError, match=rf"^{dest}: holds {named}, which no dataset synthir writes holds \(only "):
        fetch_dataset("custom", dest, beir_dir)
    assert _tree(dest) == before
    assert _leftovers(tmp_path) == ["mine", "tiny"]


def test_download_replaces_its_own_dataset_an_empty_folder_and_nothing_beside_them(tmp_path, beir_dir):
    dest = tmp_path / "raw" / "custom"
    dest.mkdir(parents=True)
    (tmp_path / "raw" / ".custom.old").mkdir()  # a user's folder that a fixed backup name would have deleted
    (tmp_path / "raw" / ".custom.old" / "mine.txt").write_text("keep me")
    fetch_dataset("custom", dest, beir_dir, dev_fraction=0.5)
    first = _tree(dest)
    assert sorted(first) == ["corpus.jsonl", "qrels/test.tsv", "queries.jsonl"]
    assert fetch_dataset("custom", dest, beir_dir, dev_fraction=0.5) == dest  # a rerun over its own output
    assert _tree(dest) == first
    assert _leftovers(tmp_path / "raw") == [".custom.old", "custom"]
    assert (tmp_path / "raw" / ".custom.old" / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (".", r"\.: is or holds the current folder; name a new folder for the output"),
        ("..", r"\.\.: is or holds the current folder; name a new folder for the output"),
        ("/", r"/: is the filesystem root; name a new folder for the output"),
        ("HOME", r"/home: is or holds the home folder; name a new folder for the output"),
        ("project", r"/project: is or holds the current folder; name a new folder for the output"),
    ],
)
def test_download_into_the_project_root_or_home_is_one_error_and_deletes_nothing(
    tmp_path, monkeypatch, capsys, beir_dir, output, message
):
    from synthir.cli import run

    project, home = tmp_path / "project", tmp_path / "home"
    (project / "src").mkdir(parents=True)
    (project / "README.md").write_text("keep me")
    home.mkdir()  # empty: still never replaced
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(project)
    given = {"HOME": str(home), "project": str(project)}.get(output, output)
    before = _tree(tmp_path)
    assert run(["download", "custom", "--output", given, "--path", str(beir_dir)]) == 1
    error = capsys.readouterr().err.strip()
    assert re.fullmatch(rf"error: ({tmp_path})?{message}", error), error
    assert _tree(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "project", "tiny"]
