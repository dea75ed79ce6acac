"""One run store for every stage: rows written as parquet parts, resumed by id, committed atomically.

A stage's table lives at ``<folder>/<name>.parquet`` (the committed file) while the rows written since
the last commit sit in ``<folder>/<name>.parts/part-NNNNNN.parquet``. Each part appears only when it
is complete (written to a temporary name, then renamed), so a run killed at any moment leaves
nothing half-written, and a rerun reads what is there and does only the rest. Writing a batch costs
the batch, not the table (the store it replaces rewrote the whole file after every batch: O(n²)).

Two modes:

* ``append=True`` (stability, alignment rounds): the committed file is part of the table; a commit
  merges it with the parts (the last row of an id wins) and removes the parts.
* ``append=False`` (validation by chunk): the parts are the whole table, numbered by the caller
  (chunk k is ``part-k``); a commit concatenates them in order into the committed file.

A ``manifest`` (the settings that decide what a row holds) is stored beside the parts; parts written
under another manifest are discarded rather than mixed in. Several processes may write parts of one
store side by side (the shards of a generation run): temporary files are named per process and the
manifest is rewritten only when it changes.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["RunStore", "write_parquet"]

MANIFEST = "manifest.json"


def write_json(obj: Any, path: Path) -> None:
    """Write ``obj`` as indented JSON through a per-process temporary file and a rename: a process
    reading it meanwhile (a shard starting beside another) sees the old file or the new one, never a
    half-written one."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def write_parquet(obj: pd.DataFrame | Any, path: Path) -> None:
    """Write a DataFrame or a pyarrow Table to ``path`` through a temporary file and a rename, so the
    file is whole or absent, whenever the process stops."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: writers side by side never share one
    if isinstance(obj, pd.DataFrame):
        obj.to_parquet(tmp, index=False)
    else:
        import pyarrow.parquet as pq

        pq.write_table(obj, tmp)
    os.replace(tmp, path)


def _concat(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate row frames; a column that is empty in one frame (error rows) does not change the
    dtype pandas infers for it from the others."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame()
    cols = list(dict.fromkeys(c for f in frames for c in f.columns))
    if len(frames) == 1:
        return frames[0].reset_index(drop=True)
    trimmed = [frames[0], *(f.dropna(axis=1, how="all") for f in frames[1:])]
    return pd.concat(trimmed, ignore_index=True).reindex(columns=cols)


def _read_manifest(path: Path) -> dict | None:
    """A parts folder's manifest, or None where there is none (or none readable)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class RunStore:
    """A stage's rows in a run folder: parquet parts while running, one parquet file when committed.

    Args:
        path: the committed file, e.g. ``run/stability.parquet``; parts go to ``run/stability.parts/``.
        key: the row id column (resume and de-duplication; the last row written for an id wins).
        columns: column order of the committed table (extra columns follow).
        manifest: settings that must match for parts to be reused (None: any parts are reused).
        append: whether the committed file belongs to the table (see the module docstring).
        reset: start over: discard the parts (and, in append mode, the committed file).
        sort_by: a column the table is ordered by (stable sort; read and commit), e.g. the batch of
            generated samples; None: committed rows, then the parts in order.
    """

    def __init__(self, path: str | Path, *, key: str = "id", columns: list[str] | None = None,
                 manifest: Mapping[str, Any] | None = None, append: bool = True, reset: bool = False,
                 sort_by: str | None = None):
        self.path = Path(path)
        self.key = key
        self.columns = list(columns) if columns else None
        self.sort_by = sort_by
        self.append_mode = append
        self.parts_dir = self.path.with_name(self.path.stem + ".parts")
        if reset:
            shutil.rmtree(self.parts_dir, ignore_errors=True)
            if append:
                self.path.unlink(missing_ok=True)
        if manifest is not None:
            self._check_manifest(json.loads(json.dumps(dict(manifest), default=str)))

    # ------------------------------------------------------------------------------ parts

    def _check_manifest(self, manifest: dict) -> None:
        """Reuse parts written under the same settings; discard those of other settings.

        Processes that start side by side on a new run (shards) must not take each other's
        half-written manifest for "other settings": a folder without a manifest and without parts
        is claimed with an exclusive hard link (exactly one process wins; the others compare their
        settings with the winner's) instead of being cleared."""
        mpath = self.parts_dir / MANIFEST
        for _ in range(3):
            current = _read_manifest(mpath)
            if current == manifest:
                return  # ours: left as it is (another process may be writing parts beside us)
            if current is not None or self.part_paths():
                break
            self.parts_dir.mkdir(parents=True, exist_ok=True)
            tmp = mpath.with_name(f"{MANIFEST}.{os.getpid()}.claim")
            tmp.write_text(json.dumps(manifest, indent=2, default=str))
            try:
                os.link(tmp, mpath)  # atomic, and fails where the manifest already exists
                return
            except FileExistsError:
                continue  # another process claimed the folder just now: compare with its settings
            finally:
                tmp.unlink(missing_ok=True)
        if self.parts_dir.exists():
            shutil.rmtree(self.parts_dir)  # written under other settings: not ours to mix in
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        write_json(manifest, mpath)

    def part_path(self, k: int) -> Path:
        """Where part ``k`` lives (it exists only once complete)."""
        return self.parts_dir / f"part-{k:06d}.parquet"

    def part_paths(self) -> list[Path]:
        """The complete parts, in order."""
        return sorted(self.parts_dir.glob("part-*.parquet")) if self.parts_dir.is_dir() else []

    def write_part(self, rows: list[dict] | pd.DataFrame | Any, k: int | None = None) -> Path | None:
        """Write rows (dicts, a DataFrame or a pyarrow Table) as one complete part.

        Args:
            rows: the rows; nothing is written for none.
            k: the part number (chunk k of an input); None: the next free number.

        Returns:
            The part's path, or None when there were no rows.
        """
        if isinstance(rows, list):
            if not rows:
                return None
            rows = pd.DataFrame(rows)
        if len(rows) == 0:
            return None
        if isinstance(rows, pd.DataFrame) and self.columns:
            rows = rows.reindex(columns=self.columns + [c for c in rows.columns if c not in self.columns])
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        if k is None:
            done = self.part_paths()
            k = int(done[-1].stem.split("-")[1]) + 1 if done else 0
        path = self.part_path(k)
        write_parquet(rows, path)
        return path

    # ------------------------------------------------------------------------------ reading

    def read(self) -> pd.DataFrame:
        """The whole table as it stands: committed rows (append mode) and every part, one row per id."""
        frames = []
        if self.append_mode and self.path.exists():
            frames.append(pd.read_parquet(self.path))
        frames += [pd.read_parquet(p) for p in self.part_paths()]
        df = _concat(frames)
        if len(df) and self.key in df.columns:
            df = df.drop_duplicates(subset=self.key, keep="last").reset_index(drop=True)
        if len(df) and self.sort_by in df.columns:
            df = df.sort_values(self.sort_by, kind="stable").reset_index(drop=True)
        if self.columns:
            df = df.reindex(columns=self.columns + [c for c in df.columns if c not in self.columns])
        return df

    def done_ids(self) -> set[str]:
        """Ids of the rows already written (committed or in parts): what a rerun skips."""
        ids: set[str] = set()
        paths = ([self.path] if self.append_mode and self.path.exists() else []) + self.part_paths()
        for p in paths:
            try:
                ids.update(pd.read_parquet(p, columns=[self.key])[self.key].astype(str))
            except (KeyError, ValueError):  # an empty table written without the key column
                continue
        return ids

    # ------------------------------------------------------------------------------ commit

    def commit(self, schema: Any = None) -> Path:
        """Merge into the committed file (atomic replace) and remove the parts.

        Args:
            schema: a pyarrow schema; given, parts are streamed into the file in order (no
                de-duplication, constant memory: for large chunked tables); None: the table of
                :meth:`read` is written.

        Returns:
            The committed file.
        """
        if self.append_mode and self.path.exists() and not self.part_paths():
            shutil.rmtree(self.parts_dir, ignore_errors=True)
            return self.path  # nothing new: the committed file is left as it is
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if schema is not None:
            import pyarrow.parquet as pq

            tmp = self.path.with_name(self.path.name + ".tmp")
            writer = pq.ParquetWriter(tmp, schema)
            try:
                if self.append_mode and self.path.exists():
                    writer.write_table(pq.read_table(self.path, schema=schema))
                for part in self.part_paths():
                    writer.write_table(pq.read_table(part, schema=schema))
            finally:
                writer.close()
            os.replace(tmp, self.path)
        else:
            write_parquet(self.read(), self.path)
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        return self.path
