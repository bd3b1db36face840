"""Files: atomic writes (a crash never leaves a half-written file or folder), JSON-lines reading with errors
that name the file and line, and where derived files are cached."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .errors import DataError


def cache_root() -> Path:
    """Where derived files (joined model parts, LLM completions, embeddings) live: $SYNTHIR_CACHE_DIR or
    ~/.cache/synthir."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "synthir"
    return Path(os.environ.get("SYNTHIR_CACHE_DIR", default))


def file_digest(path: str | Path, algorithm: str = "sha256", chunk: int = 1 << 22) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _require_writable_target(path: Path, kind: str) -> None:
    if kind == "file" and path.is_dir():
        raise DataError(f"{path}: is a folder, expected a file path")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise DataError(f"{path}: is a file, expected a folder path")


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path`; it replaces `path` only if the block succeeds. The file gets the
    permissions a plain `open` would give (0666 less the umask)."""
    path = Path(path)
    _require_writable_target(path, "file")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _require_replaceable(path: Path, given: Path) -> None:
    """Refuse to replace the filesystem root or a folder holding the current or the home folder (`given`: how
    the caller named `path`)."""
    resolved = path.resolve()
    if resolved == resolved.parent:
        raise DataError(f"{given}: is the filesystem root; name a new folder for the output")
    for place, what in ((Path.cwd(), "current"), (Path(os.path.expanduser("~")), "home")):
        if place.resolve().is_relative_to(resolved):
            raise DataError(f"{given}: is or holds the {what} folder; name a new folder for the output")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary sibling folder; it replaces `path` only if the block succeeds. The folder gets
    the permissions a plain `mkdir` would give (0777 less the umask). Nothing but `path` itself is removed, and
    never the filesystem root or a folder holding the current or the home folder."""
    given = path = Path(path)
    if path.name in ("", ".", ".."):  # `.`, `/`, `a/..`: name the folder itself, so its siblings are well defined
        path = path.resolve()
    _require_writable_target(path, "folder")
    if path.is_dir():
        _require_replaceable(path, given)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        tmp.chmod(0o777 & ~_umask())
        yield tmp
        if path.exists() or path.is_symlink():
            _swap(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap(new: Path, path: Path) -> None:
    """Put folder `new` in the place of `path`; the previous `path` is put back if that fails, and kept where it
    was moved (named in the error) if even that fails: it is removed only once `path` holds new or old."""
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))  # never a user's file
    try:
        os.replace(path, old / path.name)
    except BaseException:
        old.rmdir()
        raise
    try:
        os.replace(new, path)
    except BaseException as exc:
        try:
            os.replace(old / path.name, path)
        except OSError as restore:
            raise OSError(
                f"{path}: not replaced ({exc}); its previous content is kept in {old / path.name} "
                f"(putting it back failed: {restore})"
            ) from exc
        old.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)  # a link inside is removed, not followed


def write_json(path: str | Path, data: Any) -> None:
    with atomic_file(path) as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False)
        handle.write("\n")


def is_gzip(path: str | Path) -> bool:
    """JSON-lines files named `*.gz` are read and written gzip-compressed."""
    return Path(path).suffix == ".gz"


def write_jsonl(path: str | Path, records: Iterable[dict]) -> int:
    """Write records atomically (gzip-compressed for a `.gz` name, byte-identical for the same records);
    returns how many."""
    count = 0
    with atomic_file(path, "wb") as raw:
        packed = gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) if is_gzip(path) else None
        handle = io.TextIOWrapper(packed or raw, encoding="utf-8", newline="\n", write_through=True)
        try:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
        finally:
            handle.detach()  # atomic_file closes (or discards) the file itself
        if packed is not None:
            packed.close()  # the gzip trailer, before atomic_file syncs the file
    return count


def require_file(path: str | Path) -> Path:
    """`path` if it is a readable file; a DataError saying what it is otherwise."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a file")
    if not path.is_file():
        raise DataError(f"{path}: not found")
    return path


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def check_unicode(record: Any, path: Path, lineno: int) -> None:
    """Refuse text that cannot be written back as UTF-8: JSON can spell a lone surrogate (`\\ud800`)."""
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(
            f"{path}:{lineno}: text is not valid Unicode (a lone surrogate escape such as \\ud800)"
        ) from None


def decode_line(raw: bytes, path: Path, lineno: int) -> str:
    """One line of a UTF-8 text file (a BOM on the first line is dropped); DataError naming file and line."""
    if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}:{lineno}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def json_lines(path: str | Path, bounds: LineBounds | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; BOM and CRLF tolerant. A bad line raises DataError
    naming file and line: malformed JSON, not an object, bytes that are not UTF-8, a lone surrogate, or (with
    `bounds`) a line or a file that expands past them."""
    path = Path(path)
    for lineno, line in text_lines(path, bounds):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{lineno}: malformed JSON: {error.msg}") from None
        except (ValueError, RecursionError) as error:  # a number of thousands of digits, nesting past the stack
            why = "nested too deeply" if isinstance(error, RecursionError) else str(error)[:80]
            raise DataError(f"{path}:{lineno}: not JSON this reader accepts ({why})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
        if _SURROGATE_ESCAPE.search(line):  # surrogate pairs are fine, lone halves are not
            check_unicode(record, path, lineno)
        yield lineno, record


@contextlib.contextmanager
def _open_lines(path: Path) -> Iterator[IO[bytes]]:
    with gzip.open(path, "rb") if is_gzip(path) else open(path, "rb") as handle:
        yield handle


@dataclass(frozen=True)
class LineBounds:
    """How far a file handed in may expand: bytes per line and in all (after decompression: a gzip bomb ends at
    the bound, never in memory)."""

    line_bytes: int
    file_bytes: int | None = None
    """None: no bound on the whole file (one that is read line by line, never whole)."""


def _numbered(handle: IO[bytes], path: Path, bounds: LineBounds | None = None) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line); a damaged gzip stream is a DataError naming the file and line, and so is a line
    or a file past `bounds`."""
    lineno, total = 0, 0
    limit = bounds.line_bytes + 1 if bounds else -1
    try:
        while raw := handle.readline(limit):
            lineno += 1
            total += len(raw)
            if bounds and len(raw) > bounds.line_bytes:
                raise DataError(f"{path}:{lineno}: line longer than {bounds.line_bytes:,} bytes")
            if bounds and bounds.file_bytes is not None and total > bounds.file_bytes:
                raise DataError(f"{path}:{lineno}: the file expands past {bounds.file_bytes:,} bytes")
            yield lineno, raw
    except (OSError, EOFError, zlib.error) as error:
        if not is_gzip(path):
            raise
        raise DataError(f"{path}:{lineno + 1}: not a readable gzip file ({error})") from None


def text_lines(path: str | Path, bounds: LineBounds | None = None) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line of a UTF-8 text file (gzip-compressed for a `.gz` name); a line that is
    not UTF-8 or past `bounds` is a DataError naming file and line."""
    path = require_file(path)
    with _open_lines(path) as handle:
        for lineno, raw in _numbered(handle, path, bounds):
            yield lineno, decode_line(raw, path, lineno)


def read_json(path: str | Path, what: str, max_bytes: int) -> Any:
    """A JSON file of at most `max_bytes` holding `what` (named in the errors); DataError naming the file (and
    line) when it is larger, not UTF-8, not JSON, or JSON this reader refuses (endless digits, deep nesting)."""
    path = require_file(path)
    if path.stat().st_size > max_bytes:
        raise DataError(f"{path}: larger than {max_bytes:,} bytes; not {what}")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}: not JSON ({what}): {error.msg}") from None
    except ValueError as error:  # an integer of more than 4300 digits
        raise DataError(f"{path}: not {what} ({str(error)[:80]})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to be {what}") from None


def read_jsonl(path: str | Path) -> Iterator[dict]:
    for _, record in json_lines(path):
        yield record


def is_folder(path: str, expand_home: bool = False) -> bool:
    """Whether `path` names a folder (`~` expanded if `expand_home`); False for a name the system refuses (too
    long, a NUL byte)."""
    try:
        return (Path(path).expanduser() if expand_home else Path(path)).is_dir()
    except (OSError, ValueError):
        return False
