"""Where an export lands: the Hub's file layout on disk, the stamp that proves whose export a directory holds, the
swap into place, and the push.

Layout (what ``datasets.load_dataset(path)`` and the Hub read, declared by the card's ``configs``)::

    README.md                          the card (its YAML: configs, dataset_info, ...)
    data/train-00000-of-00001.parquet  config "default", split train (the curated rows)
    data/test-00000-of-00001.parquet   config "default", split test (the held-out problems, when the run evaluates)
    pool/train-00000-of-00001.parquet  config "pool": every judged completion and its curation decision
    dataset/                           the default config as ``save_to_disk`` (for ``datasets.load_from_disk``)
    lessmore-export.json               the stamp (never pushed)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

STAMP = "lessmore-export.json"
HUB_FILES = ["README.md", "data/*", "pool/*"]  # what a push uploads: the card and the parquet files
EXPORT_DIRS = ("data", "pool", "dataset")


def shard(split: str) -> str:
    """File name of a one-shard split, as ``push_to_hub`` names it."""
    return f"{split}-00000-of-00001.parquet"


def write_layout(out: Path, default: dict[str, Any], pool) -> tuple[Any, Any]:
    """Write the parquet files and ``dataset/``; return the card metadata that describes them (``configs`` as
    ``datasets``' MetadataConfigs, ``dataset_info`` as its DatasetInfosDict)."""
    import datasets
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from datasets.utils.metadata import MetadataConfigs

    infos, configs = {}, {}
    for config, directory, splits in (("default", "data", default), ("pool", "pool", {"train": pool})):
        (out / directory).mkdir(parents=True, exist_ok=True)
        info = DatasetInfo(config_name=config, features=next(iter(splits.values())).features, splits=SplitDict(),
                           download_size=0, dataset_size=0)
        for split, ds in splits.items():
            path = out / directory / shard(split)
            ds.to_parquet(str(path))
            info.splits.add(SplitInfo(name=split, num_bytes=ds.data.nbytes, num_examples=len(ds)))
            info.download_size += path.stat().st_size
            info.dataset_size += ds.data.nbytes
        info.size_in_bytes = info.download_size + info.dataset_size
        infos[config] = info
        configs[config] = {"data_files": [{"split": s, "path": f"{directory}/{s}-*"} for s in splits]}
    datasets.DatasetDict(default).save_to_disk(str(out / "dataset"))
    return MetadataConfigs(configs), DatasetInfosDict(infos)


# -- the stamp -------------------------------------------------------------------------------------------------------


def _digests(directory: Path) -> dict[str, str]:
    """sha256 of every file of the export in ``directory`` (the card, data/, pool/, dataset/), by relative path;
    other files there (the runner's markers, when the export is the stage directory) are not the export's."""
    files = [directory / "README.md", *(p for sub in EXPORT_DIRS for p in (directory / sub).rglob("*"))]
    out = {}
    for path in sorted(p for p in files if p.is_file()):
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        out[path.relative_to(directory).as_posix()] = h.hexdigest()
    return out


def write_stamp(directory: Path, run_dir: str, fingerprint: str) -> None:
    """Stamp ``directory`` as this run's export: the run directory, the export's fingerprint, its files' digests."""
    stamp = {"lessmore_export": {"run_dir": str(Path(run_dir).resolve()), "fingerprint": fingerprint,
                                 "files": _digests(directory)}}
    tmp = directory / f".{STAMP}.tmp"
    tmp.write_text(json.dumps(stamp, indent=1))
    os.replace(tmp, directory / STAMP)


def read_stamp(directory: Path) -> dict[str, Any] | None:
    """The stamp of a lessmore export directory (None: not a lessmore export, or unreadable)."""
    try:
        data = json.loads((directory / STAMP).read_text())
    except (OSError, ValueError):
        return None
    stamp = data.get("lessmore_export") if isinstance(data, dict) else None
    return stamp if isinstance(stamp, dict) else None


def stamp_problem(directory: Path, run_dir: str, fingerprint: str | None) -> str | None:
    """Why ``directory`` no longer holds this run's export of this fingerprint, as written (None: it does)."""
    stamp = read_stamp(directory)
    if stamp is None:
        return f"its export {directory} is missing" if not directory.exists() else f"{directory} has no export stamp"
    if stamp.get("run_dir") != str(Path(run_dir).resolve()):
        return f"{directory} now holds the export of another run ({stamp.get('run_dir')})"
    if stamp.get("fingerprint") != fingerprint:
        return f"{directory} holds another export of this run"
    files = _digests(directory)
    changed = sorted(set(files) ^ set(stamp.get("files", {})) | {f for f in files if stamp["files"].get(f) != files[f]})
    if changed:
        return f"{directory} changed since it was written ({changed[0]})"
    return None


# -- moving into place, pushing ---------------------------------------------------------------------------------------


def replace_dir(built: Path, target: Path) -> None:
    """Move ``built`` to ``target``, replacing what was there; the old copy is removed only once the new is in."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        os.replace(target, old)
    os.replace(built, target)
    if old.exists():
        shutil.rmtree(old)


def push(directory: Path, repo_id: str, private: bool, token: str | None) -> None:
    """Upload the card and the parquet files to the Hub dataset ``repo_id`` in one commit.

    The Hub copy is the local layout file for file: its README carries the ``configs`` and ``dataset_info`` that
    describe the files, so nothing written by one upload is lost to another, and a half-finished push never
    leaves a card that disagrees with the data. Shards of an earlier push are replaced."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_folder(folder_path=str(directory), repo_id=repo_id, repo_type="dataset", allow_patterns=HUB_FILES,
                      delete_patterns=["data/*", "pool/*"], commit_message="Upload dataset (lessmore export)")
