"""Safe zip extraction: no member may escape the target folder, be a link, or inflate past a bound.

Zip bombs are refused twice: from the sizes the archive declares (before anything is written) and while
streaming, in case the declared sizes lie.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from .errors import UnsafeArchiveError

MAX_TOTAL_BYTES = 64 << 30
"""The most an archive may inflate to (BEIR's largest zips hold a few GB)."""
MAX_RATIO = 200
"""The largest uncompressed/compressed ratio allowed (text compresses ~3-10x; bombs reach 1000x)."""
_CHUNK = 1 << 20


def _check_member(archive: Path, dest: Path, info: zipfile.ZipInfo) -> None:
    name = info.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (parts and ":" in parts[0]):
        raise UnsafeArchiveError(f"{archive}: member '{name}' has an absolute path")
    if ".." in parts:
        raise UnsafeArchiveError(f"{archive}: member '{name}' climbs out with '..'")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UnsafeArchiveError(f"{archive}: member '{name}' is a symbolic link")
    if not (dest / name).resolve().is_relative_to(dest):
        raise UnsafeArchiveError(f"{archive}: member '{name}' would be written outside {dest}")


def _check_sizes(archive: Path, members: list[zipfile.ZipInfo], max_total: int, max_ratio: float) -> None:
    declared = sum(info.file_size for info in members)
    if declared > max_total:
        raise UnsafeArchiveError(f"{archive}: inflates to {declared:,} bytes, more than the {max_total:,} allowed")
    packed = max(archive.stat().st_size, 1)
    if declared > max_ratio * packed:
        raise UnsafeArchiveError(
            f"{archive}: inflates {declared / packed:.0f}x ({packed:,} -> {declared:,} bytes), "
            f"more than the {max_ratio:.0f}x allowed (a zip bomb?)"
        )


def safe_extract(
    archive: str | Path, dest: str | Path, max_total: int = MAX_TOTAL_BYTES, max_ratio: float = MAX_RATIO
) -> None:
    """Extract a zip into `dest` after checking every member; on any failure `dest` is removed again if this
    call created it, so nothing half-extracted is left behind."""
    archive, dest = Path(archive), Path(dest)
    created = not dest.exists()
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = zipped.infolist()
            root = dest.resolve()
            for info in members:
                _check_member(archive, root, info)
            _check_sizes(archive, members, max_total, max_ratio)
            dest.mkdir(parents=True, exist_ok=True)
            budget = min(max_total, int(max_ratio * max(archive.stat().st_size, 1)))
            for info in members:
                budget -= _extract_member(zipped, info, root, archive, budget)
    except zipfile.BadZipFile as error:
        _discard(dest, created)
        raise UnsafeArchiveError(f"{archive}: not a valid zip archive ({error})") from None
    except BaseException:
        _discard(dest, created)
        raise


def _extract_member(zipped: zipfile.ZipFile, info: zipfile.ZipInfo, root: Path, archive: Path, budget: int) -> int:
    """Stream one member out, counting bytes against its declared size and the archive's budget."""
    target = root / info.filename
    if info.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with zipped.open(info) as source, open(target, "wb") as out:
        while block := source.read(_CHUNK):
            written += len(block)
            if written > info.file_size or written > budget:
                raise UnsafeArchiveError(f"{archive}: member '{info.filename}' inflates past its declared size")
            out.write(block)
    return written


def _discard(dest: Path, created: bool) -> None:
    if created:
        shutil.rmtree(dest, ignore_errors=True)
