"""Streaming readers for every input ``llamat-cif validate`` accepts.

Each yields records ``{"id", "text", "fmt", "target_formula", "target_spacegroup"}`` one at a time,
so a 100k-structure input never sits in memory whole. Ids are stable: the file name (folder, zip)
or the ``id`` column, else the row / block index.
"""

from __future__ import annotations

import math
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from llamat_cif.sampling.rows import SAMPLES_FILE, read_samples, samples_file

#: Bytes read from one file at most; anything longer is refused by the parse step anyway.
MAX_READ_BYTES = 4_000_000
TEXT_COLUMNS = ("text", "cif")
TARGET_COLUMNS = ("target_formula", "target_spacegroup")


class InputError(ValueError):
    """The input path or table cannot be read as structures."""


#: joins a repeated id to its occurrence number: the second ``mp-1`` becomes ``mp-1~2``
DUPLICATE_SEPARATOR = "~"


class UniqueIds:
    """The one rule for repeated ids, in every command: the first occurrence keeps its id, later
    ones get ``~2``, ``~3``... (in input order), so no row is lost or overwritten and reruns of the
    same input give the same ids. ``renamed`` counts the ids changed.
    """

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}
        self.renamed = 0

    def __call__(self, id_: str) -> str:
        k = self._seen.get(id_, 0) + 1
        self._seen[id_] = k
        if k == 1:
            return id_
        new = f"{id_}{DUPLICATE_SEPARATOR}{k}"
        while new in self._seen:  # the input itself may hold "mp-1~2"
            k += 1
            new = f"{id_}{DUPLICATE_SEPARATOR}{k}"
        self._seen[id_] = k
        self._seen[new] = 1
        self.renamed += 1
        return new


def _clean(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, str) and not v.strip():
        return None
    return v


def _record(id_: Any, text: Any, fmt: Any = None, tf: Any = None, tsg: Any = None) -> dict[str, Any]:
    fmt = _clean(fmt)
    return {"id": str(id_), "text": text if text is not None else "",
            "fmt": str(fmt).lower() if fmt else None,
            "target_formula": _clean(tf), "target_spacegroup": _clean(tsg)}


def _pick_column(columns, column: str | None) -> str:
    if column:
        if column not in columns:
            raise InputError(f"column {column!r} not in the table (columns: {', '.join(map(str, columns))})")
        return column
    for c in TEXT_COLUMNS:
        if c in columns:
            return c
    raise InputError(f"the table needs a 'text' or 'cif' column (has: {', '.join(map(str, columns))})")


def iter_frame(df: pd.DataFrame, *, column: str | None = None, fmt: str | None = None,
               start: int = 0) -> Iterator[dict[str, Any]]:
    """Records from a table with ``id`` (optional) and ``text`` or ``cif`` (+ ``fmt``, targets).

    When a table has both ``text`` and ``cif`` (the samples of ``llamat-cif generate``), the raw
    model output ``text`` is what gets validated: ``cif`` is already a re-written decoding.
    """
    col = _pick_column(df.columns, column)
    has = {c: c in df.columns for c in ("id", "fmt", *TARGET_COLUMNS)}
    for i, row in enumerate(df.to_dict("records")):
        rid = row["id"] if has["id"] and _clean(row["id"]) is not None else start + i
        # a ``fmt`` column describes ``text``; a ``cif`` column is CIF by definition
        row_fmt = fmt or ("cif" if col == "cif" else (row["fmt"] if has["fmt"] else None))
        yield _record(rid, row[col], row_fmt, row.get("target_formula"), row.get("target_spacegroup"))


def _read_limited(fh) -> str:
    data = fh.read(MAX_READ_BYTES + 1)
    return data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data


def iter_folder(path: Path, *, fmt: str | None = None) -> Iterator[dict[str, Any]]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() == ".cif")
    if not files:
        raise InputError(f"no .cif files in folder {path}")
    for p in files:
        with open(p, "rb") as fh:
            text = _read_limited(fh)
        yield _record(p.relative_to(path).with_suffix("").as_posix(), text, fmt or "cif")


def iter_zip(path: Path, *, fmt: str | None = None) -> Iterator[dict[str, Any]]:
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise InputError(f"{path}: not a readable zip file ({exc})") from exc
    with zf:
        names = sorted(n for n in zf.namelist()
                       if n.lower().endswith(".cif") and not n.startswith("__MACOSX/") and not n.endswith("/"))
        if not names:
            raise InputError(f"no .cif files in zip {path}")
        for n in names:
            try:
                with zf.open(n) as fh:
                    text = _read_limited(fh)
            except Exception:  # noqa: BLE001 - a corrupt member becomes an "empty text" error row
                text = ""
            yield _record(Path(n).with_suffix("").as_posix(), text, fmt or "cif")


def iter_csv(path: Path, *, column: str | None = None, fmt: str | None = None,
             chunk_size: int = 1000) -> Iterator[dict[str, Any]]:
    sep = "\t" if path.name.lower().endswith((".tsv", ".tsv.gz")) else ","
    start = 0
    reader = pd.read_csv(path, sep=sep, chunksize=chunk_size, dtype=str, keep_default_na=False)
    for chunk in reader:
        yield from iter_frame(chunk, column=column, fmt=fmt, start=start)
        start += len(chunk)


def iter_parquet(path: Path, *, column: str | None = None, fmt: str | None = None,
                 chunk_size: int = 1000) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    col = _pick_column(names, column)
    wanted = [c for c in ("id", col, "fmt", *TARGET_COLUMNS) if c in names]
    start = 0
    for batch in pf.iter_batches(batch_size=chunk_size, columns=wanted):
        df = batch.to_pandas()
        yield from iter_frame(df, column=col, fmt=fmt, start=start)
        start += len(df)


_DATA_LINE = re.compile(r"^\s*data_", re.IGNORECASE)


def iter_concatenated(path: Path, *, fmt: str | None = None) -> Iterator[dict[str, Any]]:
    """Blocks of a text file: CIFs split at ``data_`` lines, else blank-line separated LLaMat texts."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        head = fh.read(200_000)
    is_cif = fmt == "cif" or (fmt is None and any(_DATA_LINE.match(ln) for ln in head.splitlines()))
    i = 0
    buf: list[str] = []
    size = 0

    def flush():
        nonlocal i, buf, size
        text = "".join(buf)
        buf, size = [], 0
        if text.strip():
            rec = _record(i, text, fmt or ("cif" if is_cif else None))
            i += 1
            return rec
        return None

    has_data = False  # a comment preamble before ``data_`` belongs to the block that follows
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if is_cif:
                is_data = bool(_DATA_LINE.match(line))
                boundary = is_data and has_data
                has_data = has_data or is_data
            else:
                boundary = not line.strip() and any(s.strip() for s in buf)
            if boundary:
                if (rec := flush()) is not None:
                    yield rec
                has_data = is_cif
            if size <= MAX_READ_BYTES:  # a monstrous block keeps only its head; parse refuses it
                buf.append(line)
                size += len(line)
        if (rec := flush()) is not None:
            yield rec


def load_targets(path: str | Path) -> dict[str, dict[str, Any]]:
    """A sidecar table ``id, target_formula, target_spacegroup`` as ``{id: {...}}``."""
    p = Path(path)
    df = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p, dtype=str, keep_default_na=False)
    if "id" not in df.columns:
        raise InputError(f"targets file {p} needs an 'id' column")
    cols = [c for c in TARGET_COLUMNS if c in df.columns]
    if not cols:
        raise InputError(f"targets file {p} needs target_formula and/or target_spacegroup")
    return {str(r["id"]): {c: _clean(r[c]) for c in cols} for r in df[["id", *cols]].to_dict("records")}


def iter_input(
    source: Any,
    *,
    column: str | None = None,
    fmt: str | None = None,
    chunk_size: int = 1000,
    targets: str | Path | dict | None = None,
    limit: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Records from any supported input, ids made unique by :class:`UniqueIds`.

    Args:
        source: a folder of ``.cif`` files, a ``.zip`` of them, a run folder of ``generate`` (its
            samples, :func:`llamat_cif.sampling.rows.read_samples`), a CSV/TSV (optionally gzipped) or
            parquet table with a ``cif`` or ``text`` column, a file of concatenated CIFs (or
            blank-line separated LLaMat texts), a ``pandas.DataFrame``, or ``"dataset:split"``
            (e.g. ``"mp20:test"``) from the data registry.
        column: the text column of a table (default ``text``, else ``cif``).
        fmt: force ``"cif"`` or ``"llamat"`` (default: the ``fmt`` column, else detected).
        chunk_size: rows read at a time from tables.
        targets: sidecar of conditions by id (path or dict); fills targets a record lacks.
        limit: stop after this many records.

    Raises:
        InputError: the source does not exist or has no structures column.
    """
    tmap = load_targets(targets) if isinstance(targets, str | Path) else (targets or {})
    it = _records(source, column=column, fmt=fmt, chunk_size=chunk_size)
    unique = UniqueIds()
    for n, rec in enumerate(it):
        if limit is not None and n >= limit:
            return
        rec["id"] = unique(rec["id"])
        if tmap and rec["id"] in tmap:
            for k, v in tmap[rec["id"]].items():
                if rec.get(k) is None:
                    rec[k] = v
        yield rec


def _records(source: Any, *, column, fmt, chunk_size) -> Iterator[dict[str, Any]]:
    if isinstance(source, pd.DataFrame):
        yield from iter_frame(source, column=column, fmt=fmt)
        return
    p = Path(str(source))
    if not p.exists():
        if isinstance(source, str) and ":" in source and "/" not in source:
            from llamat_cif.data import load_split

            name, split = source.split(":", 1)
            yield from iter_frame(load_split(name, split), column=column or "cif", fmt=fmt)
            return
        raise InputError(f"input {source} does not exist")
    low = p.name.lower()
    if (p.is_dir() and samples_file(p) is not None) or low == SAMPLES_FILE:
        # a generate run (its samples.parquet, or an older run's samples.csv), by the one reader
        yield from iter_frame(read_samples(p), column=column, fmt=fmt)
    elif p.is_dir():
        yield from iter_folder(p, fmt=fmt)
    elif low.endswith(".zip"):
        yield from iter_zip(p, fmt=fmt)
    elif low.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz")):
        yield from iter_csv(p, column=column, fmt=fmt, chunk_size=chunk_size)
    elif low.endswith((".parquet", ".pq")):
        yield from iter_parquet(p, column=column, fmt=fmt, chunk_size=chunk_size)
    else:
        yield from iter_concatenated(p, fmt=fmt)
