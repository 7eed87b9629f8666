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
# Written when a stage starts (its fingerprint) and removed when it finishes: a half-done map stage resumes.
STARTED = "_STARTED"


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
    write_text_atomic(Path(directory) / MARKER, json.dumps({"fingerprint": fingerprint, **payload}, indent=1, default=str))


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a text file through a temp name and a rename: a killed write leaves the old file or none, never half."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def describe_files(directory: str | os.PathLike) -> dict[str, dict[str, int]]:
    """Every finished file below a directory (relative path -> bytes, and rows for part files), for its marker.
    Markers and temp files (dot names) are left out."""
    import pyarrow.parquet as pq

    d = Path(directory)
    if not d.is_dir():
        return {}
    parts = set(part_files(d))
    out: dict[str, dict[str, int]] = {}
    for path in sorted(d.rglob("*")):
        rel = path.relative_to(d)
        if not path.is_file() or path.name in (MARKER, STARTED) or any(p.startswith(".") for p in rel.parts):
            continue
        out[rel.as_posix()] = {"bytes": path.stat().st_size}
        if path in parts:
            out[rel.as_posix()]["rows"] = pq.ParquetFile(path).metadata.num_rows
    return out


def files_problem(directory: str | os.PathLike, listed: Any) -> str | None:
    """Why a directory no longer holds what its marker listed (``describe_files``), or None when it does: a listed
    file missing, of another size or row count, or unreadable, or a part file the marker does not list."""
    import pyarrow.parquet as pq

    d = Path(directory)
    if not isinstance(listed, dict) or not all(isinstance(v, dict) for v in listed.values()):
        return "its file list is garbled"
    for rel, want in listed.items():
        path = d / rel
        if not path.is_file():
            return f"{rel} is missing"
        size = path.stat().st_size
        if size != want.get("bytes"):
            return f"{rel} has {size} bytes, the marker says {want.get('bytes')}"
        if "rows" in want:
            try:
                rows = pq.ParquetFile(path).metadata.num_rows
            except Exception:  # noqa: BLE001 - any unreadable file is damage, whatever pyarrow raises
                return f"{rel} cannot be read"
            if rows != want["rows"]:
                return f"{rel} has {rows} rows, the marker says {want['rows']}"
    extra = [p.name for p in part_files(d) if p.name not in listed]
    if extra:
        return f"{extra[0]} is not one of its part files" + (f" (nor {len(extra) - 1} more)" if len(extra) > 1 else "")
    return None


def drop_damaged_parts(directory: str | os.PathLike) -> list[str]:
    """Remove part files whose footer cannot be read (truncated or garbled); returns their names."""
    import pyarrow.parquet as pq

    removed = []
    for path in part_files(directory):
        try:
            pq.ParquetFile(path).metadata
        except Exception:  # noqa: BLE001 - any unreadable file is damage, whatever pyarrow raises
            path.unlink()
            removed.append(path.name)
    return removed


def drop_duplicate_rows(directory: str | os.PathLike, key: list[str] | tuple[str, ...], seen: set | None = None) -> int:
    """Keep the first row of each ``key`` (in part-file order, after the keys in ``seen``); returns the rows dropped.
    A part file that loses rows is rewritten before the old one is removed: a crash in between leaves duplicates that
    the next call drops, never fewer rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    seen = set() if seen is None else set(seen)
    dropped = 0
    for path in part_files(directory):
        keys = pq.read_table(path, columns=list(key))
        mask = []
        for k in zip(*(keys[c].to_pylist() for c in key)):
            mask.append(k not in seen)
            seen.add(k)
        if all(mask):
            continue
        dropped += mask.count(False)
        if any(mask):
            write_part(pq.read_table(path).filter(pa.array(mask)), directory)
        path.unlink()
    return dropped
