"""The download stage's library: BEIR registry, checksummed download or mirror, safe unzip, atomic output.

Offline runs set SYNTHIR_DATA_MIRROR to a folder holding `<name>/` (BEIR layout) or `<name>.zip`; its files
are checksummed like a download. Any local BEIR folder can also be used as a custom dataset.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..archive import safe_extract
from ..beir import load_dataset, split_names
from ..config import DatasetParams
from ..errors import ChecksumError, DataError, excerpt
from ..fileio import atomic_dir, cache_root, file_digest, require_file, write_json
from .splits import carve_dev, describe_splits

log = logging.getLogger(__name__)

MIRROR_ENV = "SYNTHIR_DATA_MIRROR"
BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"


@dataclass(frozen=True)
class Source:
    md5: str
    """md5 of the official zip, as published in the BEIR README."""
    files: dict[str, str] = field(default_factory=dict)
    """sha256 of each extracted file, where known (checks a mirrored folder)."""


REGISTRY: dict[str, Source] = {
    "msmarco": Source("444067daf65d982533ea17ebd59501e4"),
    "trec-covid": Source("ce62140cb23feb9becf6270d0d1fe6d1"),
    "nfcorpus": Source(
        "a89dba18a62ef92f7d323ec890a0d38d",
        {
            "corpus.jsonl": "10cc83ef1826b1425e6a87090b5140b39b27755d5a27e48215a88611c899991f",
            "queries.jsonl": "d024e6621b84925d485ae473d316a0c3af31c62c8068a59fb29d22f7613aef2a",
            "qrels/train.tsv": "6336b80f9bffc4f063f3aa450047ad35c0b7c534efe4a6ba35e16dbace047f6a",
            "qrels/dev.tsv": "b1d38b5e8f78c4a5820bce2b7ec2db54911d7690dc601e76811846b211180bd8",
            "qrels/test.tsv": "f8fba6ef3d4dd9c3a242a8ba4ae38276fc3622fce7dcbae764766d564542fd2a",
        },
    ),
    "nq": Source("d4d3d2e48787a744b6f6e691ff534307"),
    "hotpotqa": Source("f412724f78b0d91183a0e86805e16114"),
    "fiqa": Source("17918ed23cd04fb15047f73e6c3bd9d9"),
    "arguana": Source("8ad3e3c2a5867cdced806d6503f29b99"),
    "webis-touche2020": Source("46f650ba5a527fc69e0a6521c5a23563"),
    "quora": Source("18fb154900ba42a600f84b839c173167"),
    "dbpedia-entity": Source("c2a39eb420a3164af735795df012ac2c"),
    "scidocs": Source("38121350fc3a4d2f48850f6aff52e4a9"),
    "fever": Source("5a818580227bfb4b35bb6fa46d9b6c03"),
    "climate-fever": Source("8b66f0a9126c521bae2bde127b4dc99d"),
    "scifact": Source(
        "5f7d1de60b170fc8027bb7898e2efca1",
        {
            "corpus.jsonl": "dec31c8182f3d744c7d2c09423756fd1d17cbef75808db13ba01cc0aab4d1ac6",
            "queries.jsonl": "8ff84a7c903f722981cd8d595c022660140c51867b27608a6d4910db86080313",
            "qrels/test.tsv": "0864bb985e0ca2367ba217977e72004d549054b2b06666ed9d4825ac7c21284c",
            "qrels/train.tsv": "a53f2114831916c096b6c37d9e54da68cef4efdcdbd5ed46533601af972acf1d",
        },
    ),
}


def verify(path: Path, algorithm: str, expected: str) -> None:
    actual = file_digest(path, algorithm)
    if actual != expected:
        raise ChecksumError(f"{path}: {algorithm} is {actual}, expected {expected}")


def _http_download(url: str, target: Path, md5: str) -> None:
    """Stream `url` to `target` with a progress bar; the md5 is checked before `target` appears."""
    import requests
    from tqdm.auto import tqdm

    partial = target.with_suffix(target.suffix + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.md5()
    try:
        with requests.get(url, stream=True, timeout=60) as response:
            response.raise_for_status()
            total = int(response.headers.get("content-length", 0)) or None
            with open(partial, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=target.name) as bar:
                for block in response.iter_content(1 << 20):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
    except requests.RequestException as error:
        partial.unlink(missing_ok=True)
        raise DataError(f"{url}: download failed ({error}); offline? set {MIRROR_ENV}") from None
    if digest.hexdigest() != md5:
        partial.unlink(missing_ok=True)
        raise ChecksumError(f"{url}: md5 is {digest.hexdigest()}, expected {md5}")
    os.replace(partial, target)


def _beir_files(folder: Path) -> list[str]:
    """The BEIR files a folder holds: corpus.jsonl (required), queries.jsonl and qrels where present."""
    require_file(folder / "corpus.jsonl")
    names = ["corpus.jsonl"] + (["queries.jsonl"] if (folder / "queries.jsonl").exists() else [])
    return names + [f"qrels/{split}.tsv" for split in split_names(folder)]


def _copy_beir(source: Path, dest: Path) -> None:
    for name in _beir_files(source):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, dest / name)


def _from_zip(archive: Path, name: str, md5: str | None, dest: Path) -> str:
    """Unpack the BEIR folder inside `archive` into `dest`; returns how messages name its files."""
    if md5:
        verify(archive, "md5", md5)
    unpacked = dest.parent / f".{dest.name}.unzip"
    shutil.rmtree(unpacked, ignore_errors=True)
    try:
        safe_extract(archive, unpacked)
        inner = unpacked / name if (unpacked / name / "corpus.jsonl").exists() else unpacked
        if not (inner / "corpus.jsonl").exists():
            raise DataError(f"{archive}: no corpus.jsonl at the top or under {name}/")
        _copy_beir(inner, dest)
        return f"{archive}:{name}" if inner != unpacked else str(archive)
    finally:
        shutil.rmtree(unpacked, ignore_errors=True)


def _from_folder(folder: Path, source: Source | None, dest: Path) -> str:
    """Copy the BEIR files of `folder` into `dest`, checksummed where known; returns how messages name them."""
    known = source.files if source else {}
    if not known:
        log.warning("%s: no published per-file checksums for this dataset; validating content only", folder)
    for name, sha in known.items():
        if not (folder / name).exists():
            raise DataError(f"{folder / name}: missing from the mirror")
        verify(folder / name, "sha256", sha)
    _copy_beir(folder, dest)
    return str(folder)


def fetch_dataset(
    name: str, dest: str | Path, path: str | Path | None = None, dev_fraction: float = 0.0, dev_seed: int = 13
) -> Path:
    """Materialise dataset `name` as a validated BEIR folder at `dest`, atomically.

    `path` (a local BEIR folder) makes it a custom dataset; otherwise the registry entry is taken from
    $SYNTHIR_DATA_MIRROR when set, else downloaded from the official BEIR URL. `dev_fraction` > 0 holds out that
    share of the train queries as the dev split (`synthir.data.splits`), unless the dataset has its own."""
    dest = Path(dest)
    with atomic_dir(dest) as tmp:  # refuses the root, the current and the home folder first
        _require_dataset_or_new(dest)
        if path is not None:
            origin = _from_folder(Path(path), REGISTRY.get(name) if Path(path).name == name else None, tmp)
        else:
            origin = _fetch_registered(name, tmp)
        try:
            load_dataset(tmp)  # validate before the folder becomes visible
        except DataError as error:  # name the user's file, not the temporary copy
            raise DataError(str(error).replace(str(tmp), origin)) from None
        carve_dev(tmp, dev_fraction, dev_seed)
    log.info("%s ready at %s", name, dest)
    return dest


def download_stage(dataset: DatasetParams, output: str | Path, splits: str | Path) -> None:
    """The download stage: `dataset` as a validated BEIR folder at `output` (`fetch_dataset`, its dev split held
    out), and the record of its splits and dev query ids at `splits`."""
    folder = fetch_dataset(dataset.name, output, dataset.path, dataset.dev_fraction, dataset.dev_seed)
    record = {"dev_fraction": dataset.dev_fraction, "dev_seed": dataset.dev_seed, **describe_splits(folder)}
    write_json(splits, record)


def _require_dataset_or_new(dest: Path) -> None:
    """`dest` is replaced only if it is new, empty or a dataset as synthir writes one, so nothing synthir did
    not write is ever deleted."""
    stranger = _stranger(dest) if dest.is_dir() else None
    if stranger is not None:
        raise DataError(
            f"{dest}: holds {excerpt(stranger)}, which no dataset synthir writes holds (only corpus.jsonl, "
            "queries.jsonl and qrels/*.tsv); name a new or empty folder for the dataset"
        )


def _stranger(folder: Path) -> str | None:
    """The first entry of `folder` (relative name) that is not a BEIR file, if any; reads no more than that."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name in ("corpus.jsonl", "queries.jsonl") and entry.is_file():
                continue
            if entry.name == "qrels" and entry.is_dir(follow_symlinks=False):
                with os.scandir(entry.path) as splits:
                    for split in splits:
                        if not (split.name.endswith(".tsv") and split.is_file()):
                            return f"qrels/{split.name}"
                continue
            return entry.name
    return None


def _fetch_registered(name: str, tmp: Path) -> str:
    source = REGISTRY.get(name)
    if source is None:
        known = ", ".join(sorted(REGISTRY))
        raise DataError(f"unknown dataset '{name}' (known: {known}); set dataset.path for a local BEIR folder")
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        folder, archive = Path(mirror) / name, Path(mirror) / f"{name}.zip"
        if archive.is_file():
            return _from_zip(archive, name, source.md5, tmp)
        if folder.is_dir():
            return _from_folder(folder, source, tmp)
        raise DataError(f"{MIRROR_ENV}={mirror}: holds neither {name}/ nor {name}.zip")
    archive = cache_root() / "downloads" / f"{name}.zip"
    if archive.exists() and file_digest(archive, "md5") != source.md5:
        archive.unlink()
    if not archive.exists():
        _http_download(BEIR_URL.format(name=name), archive, source.md5)
    return _from_zip(archive, name, source.md5, tmp)
