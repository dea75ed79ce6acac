"""Batches: validate tables and whole inputs, write ``validity.parquet`` + ``validity_summary.json``.

Large inputs stream through in chunks; each finished chunk is written as a part file at once, so
an interrupted run resumes where it stopped and memory stays bounded whatever the input size.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import pandas as pd

from llamat_cif.runs import RunStore
from llamat_cif.sampling.rows import samples_file
from llamat_cif.validators.core import COLUMNS, Thresholds, validate_one

ROWS_FILE = "validity.parquet"
#: Not ``summary.json``: a run folder also holds other stages' summaries (stability, benchmark).
SUMMARY_FILE = "validity_summary.json"

DEFINITIONS = {
    "parsed": "the text became an ordered pymatgen Structure within the limits (max_sites, max_chars, max_lattice_length)",
    "structurally_valid": "CDVAE: every interatomic distance (nearest periodic images) >= min_distance Å and volume >= min_volume Å^3",
    "compositionally_valid": "CDVAE smact_validity: single element, or all metals, or a charge-neutral oxidation-state "
                             "assignment (set: oxidation_states) passing the Pauling electronegativity test; "
                             "judged from the listed atoms when no structure could be built (as CDVAE does)",
    "valid": "structurally_valid and compositionally_valid (CDVAE 'validity')",
    "self_consistent": "CrystaLLM-style: stated formulas, site multiplicities and space group agree with the sites, "
                       "and all CrystalNN bond lengths are plausible; parts the text does not state are skipped",
    "condition_adherent": "reduced formula equals the target formula and/or spglib space group (symprec) equals the target",
}


def _arrow_schema():
    import pyarrow as pa

    types = {"string": pa.string(), "bool": pa.bool_(), "int64": pa.int64(), "float64": pa.float64()}
    return pa.schema([(k, types[v]) for k, v in COLUMNS.items()])


def _clean_row(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, kind in COLUMNS.items():
        v = row.get(k)
        if v is not None and hasattr(v, "item"):
            v = v.item()  # numpy scalar -> Python
        if v is not None:
            try:
                if kind == "bool":
                    v = bool(v)
                elif kind == "int64":
                    v = int(v)
                elif kind == "float64":
                    v = float(v)
                elif kind == "string":
                    v = str(v)
            except (TypeError, ValueError, OverflowError):
                v = None
        out[k] = v
    return out


def rows_to_arrow(rows: list[dict[str, Any]]):
    import pyarrow as pa

    return pa.Table.from_pylist([_clean_row(r) for r in rows], schema=_arrow_schema())


def arrow_to_frame(table) -> pd.DataFrame:
    import pyarrow as pa

    mapping = {pa.bool_(): pd.BooleanDtype(), pa.int64(): pd.Int64Dtype(), pa.string(): pd.StringDtype(),
               pa.float64(): pd.Float64Dtype()}
    return table.to_pandas(types_mapper=mapping.get)


# ------------------------------------------------------------------------------------ summary


def _rate(num: int, den: int, den_name: str) -> dict[str, Any]:
    return {"numerator": int(num), "denominator": int(den), "denominator_name": den_name,
            "value": (num / den) if den else None}


@dataclass
class SummaryCounter:
    """Integer counts accumulated chunk by chunk (so a summary never needs all rows at once)."""

    c: dict[str, int] = field(default_factory=dict)
    time_s: float = 0.0
    cpu_s: float = 0.0

    def add(self, key: str, n: int) -> None:
        self.c[key] = self.c.get(key, 0) + int(n)

    def update(self, df: pd.DataFrame) -> None:
        def count(col: str, value: bool = True) -> int:
            s = df[col]
            return int((s.astype("boolean") == value).fillna(False).sum())

        def applicable(col: str) -> int:
            return int(df[col].notna().sum())

        self.add("n", len(df))
        for col in ("parsed", "structurally_valid", "compositionally_valid", "valid"):
            self.add(col, count(col))
        # an unparsed text can be compositionally valid (its listed atoms, as CDVAE counts them)
        parsed_ok = df["parsed"].astype("boolean").fillna(False).astype(bool)
        comp_ok = df["compositionally_valid"].astype("boolean").fillna(False).astype(bool)
        self.add("compositionally_valid_and_parsed", int((parsed_ok & comp_ok).sum()))
        err = df["error"].fillna("").astype(str)
        self.add("timeouts", int(err.str.startswith("timeout").sum() + err.str.contains("; timeout").sum()))
        self.add("crashed", int(err.str.contains("check crashed|worker process died", regex=True).sum()))
        for col in ("formula_consistent", "multiplicity_consistent", "spacegroup_consistent", "self_consistent",
                    "formula_match", "spacegroup_match", "condition_adherent"):
            self.add(f"{col}:checked", applicable(col))
            self.add(f"{col}:true", count(col))
        ok = df["bond_length_score"].notna()
        self.add("bond_length:checked", int(ok.sum()))
        self.add("parsed_and_self_consistent", int(((df["parsed"].astype("boolean") == True)  # noqa: E712
                                                      & (df["self_consistent"].astype("boolean") == True)).fillna(False).sum()))  # noqa: E712
        self.time_s += float(pd.to_numeric(df["time_s"], errors="coerce").fillna(0).sum())
        self.cpu_s += float(pd.to_numeric(df["cpu_s"], errors="coerce").fillna(0).sum())

    def get(self, key: str) -> int:
        return self.c.get(key, 0)

    def summary(self, thresholds: Thresholds, *, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        g = self.get
        n, parsed = g("n"), g("parsed")
        sc = {
            part: {"checked": g(f"{part}:checked"), "consistent": g(f"{part}:true")}
            for part in ("formula_consistent", "multiplicity_consistent", "spacegroup_consistent", "self_consistent")
        }
        sc["bond_length_score_computed"] = g("bond_length:checked")
        adh = {
            part: {"requested": g(f"{part}:checked"), "met": g(f"{part}:true")}
            for part in ("formula_match", "spacegroup_match", "condition_adherent")
        }
        out: dict[str, Any] = {
            "n": n,
            "parsed": parsed,
            "structurally_valid": g("structurally_valid"),
            "compositionally_valid": g("compositionally_valid"),
            "valid": g("valid"),
            "self_consistent": g("self_consistent:true"),
            "self_consistency_checked": g("self_consistent:checked"),
            "condition_adherent": g("condition_adherent:true"),
            "condition_requested": g("condition_adherent:checked"),
            "errors": n - parsed,
            "timeouts": g("timeouts"),
            "crashed_checks": g("crashed"),
            "rates": {
                "parsed / n": _rate(parsed, n, "n (all texts)"),
                "structurally_valid / n": _rate(g("structurally_valid"), n, "n (all texts)"),
                "compositionally_valid / n": _rate(g("compositionally_valid"), n, "n (all texts)"),
                "valid / n": _rate(g("valid"), n, "n (all texts)"),
                "structurally_valid / parsed": _rate(g("structurally_valid"), parsed, "parsed"),
                "compositionally_valid / parsed": _rate(g("compositionally_valid_and_parsed"), parsed, "parsed"),
                "valid / parsed": _rate(g("valid"), parsed, "parsed"),
                "self_consistent / self_consistency_checked": _rate(
                    g("self_consistent:true"), g("self_consistent:checked"), "parsed texts with something to check"),
                "condition_adherent / condition_requested": _rate(
                    g("condition_adherent:true"), g("condition_adherent:checked"), "texts with a requested condition"),
            },
            "self_consistency": sc,
            "adherence": adh,
            "protocol": {"name": "llamat-cif", "thresholds": thresholds.as_dict(), "definitions": DEFINITIONS},
            "versions": package_versions(),
            "hardware": hardware(),
            "check_time_s_total": round(self.time_s, 3),
            "check_cpu_s_total": round(self.cpu_s, 3),
            "cpu_s_per_structure": (self.cpu_s / n) if n else None,
        }
        if extra:
            out.update(extra)
        return out


def package_versions() -> dict[str, str]:
    """The versions the validators' numbers depend on (recorded in every summary)."""
    from llamat_cif.protocol import package_versions as versions

    return versions(("llamat-cif", "pymatgen", "smact", "spglib", "numpy", "pandas", "pyarrow"),
                    missing="not installed", python=True)


def hardware() -> dict[str, Any]:
    """The machine (recorded in every summary)."""
    from llamat_cif.protocol import hardware as machine

    return machine(processor=platform.processor() or "unknown")


# ------------------------------------------------------------------------------------ running


def _tasks(records: Iterable[dict[str, Any]], start: int = 0) -> list[tuple[int, dict]]:
    return [(start + i, r) for i, r in enumerate(records)]


def _validate_records(
    records: list[dict[str, Any]],
    t: Thresholds,
    *,
    pool=None,
    timeout_s: float,
    keep_cif: bool,
    on_row: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any] | None] = [None] * len(records)
    if pool is not None:
        for idx, row in pool.map(_tasks(records)):
            rows[idx] = row
            if on_row:
                on_row()
    else:
        for i, r in enumerate(records):
            rows[i] = validate_one(r.get("text"), fmt=r.get("fmt"), target_formula=r.get("target_formula"),
                                   target_spacegroup=r.get("target_spacegroup"), id=r.get("id", str(i)),
                                   timeout_s=timeout_s, keep_cif=keep_cif, _thresholds=t)
            if on_row:
                on_row()
    return rows  # type: ignore[return-value]


def validate_table(
    df: pd.DataFrame,
    *,
    n_jobs: int = 1,
    timeout_s: float = 30.0,
    keep_cif: bool = False,
    column: str | None = None,
    **thresholds: Any,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Validate every row of a table.

    Args:
        df: columns ``id`` (optional: row index), ``cif`` or ``text`` (+ optional ``fmt``,
            ``target_formula``, ``target_spacegroup``). With both ``text`` and ``cif``, ``text``
            is validated (see :func:`llamat_cif.validators.inputs.iter_frame`).
        n_jobs: worker processes; > 1 uses a pool with a hard per-structure time limit. 1
            validates in this process with the soft (SIGALRM) limit only, which cannot stop a
            structure stuck in C code; :func:`run_validation` (the CLI) always uses workers.
        timeout_s: per-structure time limit in seconds.
        keep_cif: add the parsed structure's CIF (column ``cif``).
        column: the text column to validate (default ``text``, else ``cif``).
        **thresholds: fields of :class:`~llamat_cif.validators.core.Thresholds`.

    Returns:
        ``(rows, summary)``: one row per input row in input order, and the summary dict (integer
        counts, rates with named denominators, protocol, versions).
    """
    from llamat_cif.validators.inputs import iter_frame
    from llamat_cif.validators.pool import ValidationPool

    t = Thresholds.from_kwargs(**thresholds)
    records = list(iter_frame(df, column=column))
    t0 = time.perf_counter()
    if n_jobs > 1:
        with ValidationPool(n_jobs, t, timeout_s=timeout_s, keep_cif=keep_cif) as pool:
            rows = _validate_records(records, t, pool=pool, timeout_s=timeout_s, keep_cif=keep_cif)
    else:
        rows = _validate_records(records, t, timeout_s=timeout_s, keep_cif=keep_cif)
    wall = time.perf_counter() - t0
    out = arrow_to_frame(rows_to_arrow(rows))
    counter = SummaryCounter()
    counter.update(out)
    summary = counter.summary(t, extra={"wall_s": round(wall, 3), "n_jobs": n_jobs, "timeout_s": timeout_s,
                                        "structures_per_s": (len(rows) / wall) if wall > 0 else None})
    return out, summary


def _chunks(it: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    while True:
        chunk = list(islice(it, size))
        if not chunk:
            return
        yield chunk


def _input_fingerprint(source: Any) -> dict[str, Any]:
    if isinstance(source, pd.DataFrame):
        h = hashlib.sha256(pd.util.hash_pandas_object(source.astype(str), index=True).values.tobytes()).hexdigest()
        return {"kind": "dataframe", "rows": len(source), "sha256": h}
    p = Path(str(source))
    if p.is_dir() and (samples := samples_file(p)) is not None and samples.exists():
        p = samples  # a run folder: its samples, not the folder (which changes as outputs are written)
    if p.exists():
        st = p.stat()
        return {"kind": "path", "path": str(p.resolve()), "size": st.st_size, "mtime": int(st.st_mtime)}
    return {"kind": "name", "name": str(source)}


def run_validation(
    input_path: Any,
    out_dir: str | Path,
    *,
    n_jobs: int = 2,
    timeout_s: float = 30.0,
    chunk_size: int = 1000,
    column: str | None = None,
    fmt: str | None = None,
    targets: str | Path | None = None,
    limit: int | None = None,
    keep_cif: bool = True,
    resume: bool = True,
    progress: bool | Callable[[int], None] = False,
    executor: Any = None,
    **thresholds: Any,
) -> dict[str, Any]:
    """Validate any supported input, streaming, and write ``validity.parquet`` + ``validity_summary.json``.

    Args:
        input_path: see :func:`llamat_cif.validators.inputs.iter_input` (folder, zip, CSV, parquet,
            concatenated CIFs, DataFrame, ``"mp20:test"``).
        out_dir: output folder (created); usually the generation run folder.
        n_jobs: worker processes (each gets a hard per-structure time limit; 1 still validates
            in one worker process, for inputs of any size, so a hung structure can be killed).
        timeout_s: per-structure time limit (s).
        chunk_size: rows read, validated and written at a time (bounds memory).
        column, fmt, targets, limit: passed to the reader.
        keep_cif: keep the parsed structure as a pymatgen CIF per row (column ``cif``) for the
            stability stage.
        resume: reuse finished chunks of an interrupted run with the same input and settings.
        progress: ``True`` for a rich progress bar, or a callback receiving the rows done so far.
        executor: a :class:`llamat_cif.executors.RayExecutor` to validate the chunks on Ray (same
            parts, rows and summary; the input is read in full first); None: local worker processes.
        **thresholds: fields of :class:`~llamat_cif.validators.core.Thresholds`.

    Returns:
        The summary dict (also written to ``out_dir/validity_summary.json``).
    """
    import pyarrow.parquet as pq

    from llamat_cif.validators.inputs import iter_input
    from llamat_cif.validators.pool import ValidationPool, hard_timeout

    t = Thresholds.from_kwargs(**thresholds)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"input": _input_fingerprint(input_path), "chunk_size": chunk_size, "column": column, "fmt": fmt,
                "targets": str(targets) if targets else None, "limit": limit, "keep_cif": keep_cif,
                "thresholds": t.as_dict()}
    # chunk k is part k; parts of another input or other settings are discarded, not mixed in
    store = RunStore(out / ROWS_FILE, manifest=manifest, append=False, reset=not resume)

    records = iter_input(input_path, column=column, fmt=fmt, chunk_size=chunk_size, targets=targets, limit=limit)
    counter = SummaryCounter()
    done = 0
    reused = 0
    t0 = time.perf_counter()
    bar, task_id, callback = None, None, None
    if progress is True:
        from llamat_cif.progress import progress_bar

        bar = progress_bar("validate")
        total = len(input_path) if isinstance(input_path, pd.DataFrame) else None
        task_id = bar.add_task("validate", total=limit or total)
        bar.start()
    elif callable(progress):
        callback = progress

    def tick() -> None:
        nonlocal done
        done += 1
        if bar is not None:
            bar.advance(task_id)
        elif callback is not None and done % 100 == 0:
            callback(done)

    pool = None
    hard_limit_s = None
    todo: list[tuple[int, list[dict[str, Any]]]] = []

    def commit(k: int, rows: list[dict[str, Any]]) -> None:
        table = rows_to_arrow(rows)
        store.write_part(table, k)  # a part exists only when complete: safe to resume from
        counter.update(arrow_to_frame(table.drop_columns(["cif"])))

    try:
        for k, chunk in enumerate(_chunks(records, chunk_size)):
            part = store.part_path(k)
            if part.exists():
                df = arrow_to_frame(pq.read_table(part))
                if len(df) == len(chunk):
                    counter.update(df)
                    reused += len(df)
                    for _ in range(len(df)):
                        tick()
                    continue
            if executor is not None:
                todo.append((k, chunk))
                continue
            if pool is None:
                # always in worker processes, whatever the input size: only a worker can be killed
                # when a structure holds C code (CrystalNN's Voronoi step, spglib) past the limit;
                # a worker from the fork server costs ~50 ms, the server itself ~1.5 s once
                pool = ValidationPool(max(1, n_jobs), t, timeout_s=timeout_s, keep_cif=keep_cif)
                hard_limit_s = pool.hard_timeout_s
            commit(k, _validate_records(chunk, t, pool=pool, timeout_s=timeout_s, keep_cif=keep_cif, on_row=tick))
        if todo:
            hard_limit_s = hard_timeout(timeout_s)
            for k, rows in executor.validate_chunks(todo, t, timeout_s=timeout_s, keep_cif=keep_cif):
                commit(k, rows)
                for _ in rows:
                    tick()
    finally:
        if pool is not None:
            pool.close()
        if bar is not None:
            bar.stop()
    wall = time.perf_counter() - t0

    store.commit(schema=_arrow_schema())  # merge the parts into one file, streaming

    n_new = counter.get("n") - reused
    summary = counter.summary(t, extra={
        "input": str(input_path) if not isinstance(input_path, pd.DataFrame) else f"DataFrame ({len(input_path)} rows)",
        "rows_file": ROWS_FILE,
        "n_jobs": n_jobs,
        "executor": executor.describe() if executor is not None else "local",
        "timeout_s": timeout_s,
        "hard_time_limit_s": hard_limit_s,  # None when every row came from an interrupted run's parts
        "chunk_size": chunk_size,
        "wall_s": round(wall, 3),
        "rows_reused_from_interrupted_run": reused,
        "structures_per_s": (n_new / wall) if wall > 0 and n_new else None,
    })
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str))
    return summary
