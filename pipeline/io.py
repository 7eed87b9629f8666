"""Reading and writing stage outputs: parquet part files written atomically, so a killed run leaves no half rows."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

from pipeline import columns as C


def inside(root: str | os.PathLike, relative: str | os.PathLike, field: str) -> Path:
    """``root/relative``, refusing paths that escape ``root`` (absolute paths, ``..``, symlinks out of it) with a
    ValueError that names the config ``field``."""
    root_path = Path(root).resolve()
    target = (root_path / relative).resolve()
    if target != root_path and root_path not in target.parents:
        raise ValueError(f"{field}: {relative!s} escapes output_root {root!s}; use a path inside output_root")
    return target


def to_arrow(batch: dict[str, list[Any]]):
    """A column batch as an Arrow table, with the contract's types for known columns."""
    import pyarrow as pa

    types = C.arrow_types()
    arrays, names = [], []
    for name, values in batch.items():
        values = list(values)
        typ = types.get(name)
        try:
            arrays.append(_array(values, typ))
        except UnicodeEncodeError:
            # Lone surrogates (a JSON "\ud800" escape) are not UTF-8, which Parquet strings must be: keep the text
            # with U+FFFD in their place rather than fail the whole batch.
            arrays.append(_array([_valid_unicode(v) for v in values], typ))
        names.append(name)
    return pa.Table.from_arrays(arrays, names=names)


def _array(values: list[Any], typ):
    import pyarrow as pa

    try:
        return pa.array(values, type=typ) if typ is not None else pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def _valid_unicode(value: Any) -> Any:
    """``value`` with lone surrogates in its strings replaced by U+FFFD (surrogate pairs are kept)."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [_valid_unicode(v) for v in value]
    if isinstance(value, dict):
        return {_valid_unicode(k): _valid_unicode(v) for k, v in value.items()}
    return value


def from_arrow(table) -> dict[str, list[Any]]:
    """An Arrow table as a dict of Python lists (what stages take)."""
    return table.to_pydict()


def write_part(table, directory: str | os.PathLike, prefix: str = "part") -> Path | None:
    """Write one part file atomically (temp name, then rename). Empty tables write nothing."""
    import pyarrow.parquet as pq

    if table.num_rows == 0:
        return None
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{prefix}-{uuid.uuid4().hex[:12]}.parquet"
    tmp = directory / f".{name}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, directory / name)
    return directory / name


def part_files(directory: str | os.PathLike) -> list[Path]:
    """Finished part files of a stage directory (temp files of a killed run are ignored)."""
    d = Path(directory)
    return sorted(p for p in d.glob("*.parquet") if not p.name.startswith(".")) if d.is_dir() else []


def count_rows(directory: str | os.PathLike) -> int:
    """Rows in a stage directory, from parquet metadata (reads no data)."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in part_files(directory))


def read_columns(directory: str | os.PathLike, columns: list[str] | tuple[str, ...]):
    """Selected columns of every part file, as one Arrow table (column projection: no other data is read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = part_files(directory)
    if not files:
        return pa.table({c: pa.array([], type=C.arrow_types().get(c, pa.string())) for c in columns})
    tables = [pq.read_table(p, columns=[c for c in columns if c in pq.read_schema(p).names]) for p in files]
    return pa.concat_tables(tables, promote_options="default")


def read_table(directory: str | os.PathLike):
    """Every part file of a stage directory as one Arrow table (small outputs only)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = part_files(directory)
    if not files:
        return pa.table({})
    return pa.concat_tables([pq.read_table(p) for p in files], promote_options="default")


def read_problem_table(directory: str | os.PathLike, columns: tuple[str, ...]):
    """One row per problem (pandas), from sample-level rows that carry per-problem columns."""
    table = read_columns(directory, columns).to_pandas()
    return table.drop_duplicates(subset=[C.PROBLEM_ID]).reset_index(drop=True)


# -- fingerprints and completion markers ---------------------------------------------------------------------------

MARKER = "_SUCCESS"


def digest(*parts: object, length: int = 20) -> str:
    """A short stable hash of JSON-able parts (fingerprints of stages, steps and trials)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:length]


def code_hash(*sources: object, length: int = 16) -> str:
    """Hash of the source code behind a result. Each source is a module, a file path, or a package directory (every
    ``.py`` file below it, in path order), so an edit to any file of a package changes the hash."""
    h = hashlib.sha256()
    for source in sources:
        path = Path(getattr(source, "__file__", None) or source)  # type: ignore[arg-type]
        if path.name == "__init__.py" and getattr(source, "__path__", None):
            path = path.parent  # a package: all of its files
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for f in files:
            h.update(f.relative_to(path.parent).as_posix().encode() if path.is_dir() else b"")
            h.update(f.read_bytes())
    return h.hexdigest()[:length]


def read_marker(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The completion marker of a directory (None when there is none or it cannot be read)."""
    marker = Path(directory) / MARKER
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def marker_matches(directory: str | os.PathLike, fingerprint: str) -> bool:
    """Whether the directory holds a finished result of exactly this fingerprint."""
    marker = read_marker(directory)
    return marker is not None and marker.get("fingerprint") == fingerprint


def write_marker(directory: str | os.PathLike, fingerprint: str, **payload: Any) -> None:
    """Mark a directory finished (atomically: a killed write leaves the old marker or none, never half a file)."""
    directory = Path(directory)
    tmp = directory / f".{MARKER}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text(json.dumps({"fingerprint": fingerprint, **payload}, indent=1, default=str))
    os.replace(tmp, directory / MARKER)
