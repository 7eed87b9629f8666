"""Resolving a model reference: ``toy:<name>`` (built locally on first use), a directory, or a hub id."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

TOY_PREFIX = "toy:"


def resolve_model(ref: str) -> str:
    """A path or hub id that ``from_pretrained`` accepts. ``toy:NAME`` builds the project's tiny model if needed."""
    if ref.startswith(TOY_PREFIX):
        from pipeline.toyworld import ensure_toy_model

        return str(ensure_toy_model(ref[len(TOY_PREFIX):]))
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model {ref!r}: directory has no config.json; point `model` at a saved HF model")
        return str(path.resolve())
    if ref.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model {ref!r}: no such directory")
    return ref  # a hub id: from_pretrained downloads it (or reads the local hub cache when offline)


def model_fingerprint(resolved: str) -> str:
    """Content fingerprint of a model: its config and the names, sizes and mtimes of its weight files."""
    path = Path(resolved)
    h = hashlib.sha256()
    if path.is_dir():
        h.update((path / "config.json").read_bytes())
        for f in sorted(path.iterdir()):
            if f.suffix in (".safetensors", ".bin", ".gguf", ".json"):
                st = f.stat()
                h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    else:
        h.update(f"hub:{resolved}:{os.environ.get('LESSMORE_MODEL_REVISION', 'main')}".encode())
    return h.hexdigest()[:16]


def model_id_of(ref: str) -> str:
    """The human-readable model id written into rows (``toy:strong``, a directory name, or the hub id)."""
    if ref.startswith(TOY_PREFIX):
        return ref
    path = Path(ref)
    return path.name if path.exists() else ref


def fingerprint(*parts: object) -> str:
    """A short stable hash of JSON-able parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
