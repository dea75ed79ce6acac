"""The samples table of a run: its columns and types, the one reader, and resuming a run from it.

``generate`` writes a run's rows through the run store (:class:`llamat_cif.runs.RunStore`) into
``RUN/samples.parquet``: while the run goes on, batch ``b`` (always drawn with seed ``(seed, b)``) is
part ``b`` of ``RUN/samples.parts/``, written whole or not at all; the shards of a run write their
batches side by side into the same parts, and the run without a shard commits the whole table.
Runs written before that hold ``RUN/samples.csv`` (CIF text inside CSV): :func:`read_samples` reads
either (a run folder, a ``samples.parquet`` or a ``samples.csv``), so recorded runs and users' files
keep working, and resuming such a run continues from the whole batches its CSV files hold.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import pandas as pd

from llamat_cif.runs import RunStore, write_parquet
from llamat_cif.sampling.config import SampleConfig

SAMPLES_FILE = "samples.parquet"
LEGACY_SAMPLES_FILE = "samples.csv"  # runs written before the run store (and their shards' files)
SAMPLE_COLUMNS = ["id", "text", "fmt", "cif", "error", "target_formula", "target_spacegroup", "seed",
                  "batch", "n_tokens", "constrained"]
# the target space group is text, as the CSV held it ("" when none, else e.g. "225")
_TEXT_COLUMNS = ("id", "text", "fmt", "cif", "error", "target_formula", "target_spacegroup")
_INT_COLUMNS = ("seed", "batch", "n_tokens")
#: settings that decide what a batch holds: a run is resumed only under the same values
RESUME_KEYS = ("model", "formula", "spacegroup", "temperature", "top_p", "top_k", "batch_size", "seed",
               "constrained", "min_distance", "charge_balanced", "fmt", "max_new_tokens",
               "min_contact_ratio", "volume_window", "steer_contact_ratio", "steer_volume_window",
               "steer_contact_floor", "dead_end_redraws", "max_primitive_atoms",
               "steer_anion_distance", "steer_cation_distance", "redraw_below_floor")


def draws(cfg: dict) -> str:
    """Which random draws a run's rows come from: ``"jump"`` (constrained through the ``jump``
    decoder) or ``"stepwise"`` (``lean`` and ``transformers``, which draw the same tokens, and every
    unconstrained run). Runs are resumed only with the same draws; runs written before the ``jump``
    decoder hold ``decoder: "lean"`` (or no decoder) and read as stepwise."""
    return "jump" if cfg.get("constrained", True) and cfg.get("decoder", "lean") == "jump" else "stepwise"


def _manifest(cfg: SampleConfig) -> dict:
    """The settings a part's rows depend on; ``draws`` only when it is "jump", so a step-by-step run's
    parts written before the jump decoder keep their manifest and are resumed, not discarded."""
    keys = {k: asdict(cfg)[k] for k in RESUME_KEYS}
    return {**keys, "draws": "jump"} if draws(asdict(cfg)) == "jump" else keys


# ------------------------------------------------------------------------------------ reading


def _text(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def typed(df: pd.DataFrame) -> pd.DataFrame:
    """The samples table's types on the columns ``df`` has: text (empty string for none), integers,
    ``constrained`` boolean. A column that does not read as its type (a user's file) is left as is."""
    df = df.copy()
    for c in _TEXT_COLUMNS:
        if c in df.columns:
            df[c] = df[c].map(_text).astype(object)
    for c in _INT_COLUMNS:
        if c in df.columns:
            try:
                df[c] = pd.to_numeric(df[c]).astype("int64")
            except (TypeError, ValueError):
                pass
    if "constrained" in df.columns:
        flags = df["constrained"].map({True: True, False: False, "True": True, "False": False})
        if flags.notna().all():
            df["constrained"] = flags.astype(bool)
    return df


def frame(rows: Iterable[dict]) -> pd.DataFrame:
    """Sample rows (dicts, as drawn or read from a CSV) as a typed table in the columns' order."""
    return typed(pd.DataFrame(list(rows), columns=SAMPLE_COLUMNS))


def samples_file(run_dir: str | Path) -> Path | None:
    """The samples file of a run folder: ``samples.parquet`` (also while only its parts exist), else a
    legacy ``samples.csv``; None when the folder holds neither."""
    run = Path(run_dir)
    new = run / SAMPLES_FILE
    if new.is_file() or any(RunStore(new).part_paths()):
        return new
    return run / LEGACY_SAMPLES_FILE if (run / LEGACY_SAMPLES_FILE).is_file() else None


def read_samples(path: str | Path) -> pd.DataFrame:
    """The samples table of a run, from any version of it, typed as :func:`generate` writes it.

    Args:
        path: a run folder (its ``samples.parquet``, else its ``samples.csv``), a ``samples.parquet``
            (with the parts of a run not yet committed: the table as it stands) or a CSV (a legacy
            ``samples.csv`` or a user's table, optionally gzipped).

    Raises:
        FileNotFoundError: no samples there (one line naming the path).
    """
    p = Path(path)
    if p.is_dir():
        found = samples_file(p)
        if found is None:
            raise FileNotFoundError(f"{p}: no {SAMPLES_FILE} or {LEGACY_SAMPLES_FILE} "
                                    "(a run folder of llamat-cif generate holds one)")
        p = found
    if p.name.lower().endswith((".csv", ".csv.gz")):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found")
        return typed(pd.read_csv(p, dtype={c: str for c in _TEXT_COLUMNS}, keep_default_na=False))
    store = RunStore(p, sort_by="batch")
    if store.part_paths():
        return typed(store.read())
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found")
    return typed(pd.read_parquet(p))


# ------------------------------------------------------------------------------------ resuming


def sample_store(out: Path, cfg: SampleConfig) -> RunStore:
    """The run store of a run folder's samples; parts written under other settings are discarded."""
    return RunStore(out / SAMPLES_FILE, columns=SAMPLE_COLUMNS, sort_by="batch",
                    manifest=_manifest(cfg))


def batch_ids(batches: Iterable[int], n: int, batch_size: int) -> list[str]:
    """The ids of the rows of ``batches`` in a run of ``n`` samples."""
    return [f"s{i:06d}" for b in sorted(batches) for i in range(b * batch_size, min((b + 1) * batch_size, n))]


def resume_batches(store: RunStore, out: Path, n: int, batch_size: int, mine: list[int], *,
                   merge: bool) -> set[int]:
    """The batches of ``mine`` a run folder already holds whole, so only the others are drawn.

    A batch counts when its part, or the committed table, holds exactly its rows for this ``n`` (a
    batch sized for another ``n`` is drawn again); whole batches of a legacy ``samples.csv`` or its
    shards' files are written as parts first. With ``merge`` (the run without a shard, which
    commits) rows no batch of this ``n`` keeps are removed, so the commit holds nothing stale.
    """
    n_batches = -(-n // batch_size)
    parts = {int(p.stem.split("-")[1]): p for p in store.part_paths()}
    whole_parts = {k for k, p in parts.items() if k < n_batches
                   and sorted(pd.read_parquet(p, columns=["id"])["id"]) == batch_ids([k], n, batch_size)}
    whole_committed: set[int] = set()
    if store.path.is_file():
        committed = pd.read_parquet(store.path, columns=["id", "batch"])
        by_batch = committed.groupby(committed["batch"].astype(int))["id"]
        whole_committed = {int(b) for b, ids in by_batch if b < n_batches
                           and sorted(ids) == batch_ids([b], n, batch_size)}
    if merge:
        for k in set(parts) - whole_parts:
            parts[k].unlink()
        if store.path.is_file() and not committed["batch"].astype(int).isin(whole_committed).all():
            full = pd.read_parquet(store.path)
            write_parquet(full[full["batch"].astype(int).isin(whole_committed)], store.path)
        have = whole_parts | whole_committed
    else:  # a part being rewritten for this n outranks the committed copy of its batch
        have = whole_parts | (whole_committed - set(parts))
    have &= set(mine)
    return have | adopt_legacy(store, out, n, batch_size, set(mine) - have)


def adopt_legacy(store: RunStore, out: Path, n: int, batch_size: int, wanted: set[int]) -> set[int]:
    """Write the whole batches among ``wanted`` that a legacy ``samples.csv`` (or one of its shards'
    ``samples.shardIofK.csv``) holds as parts of ``store``; returns the batches written."""
    got: dict[int, list[dict]] = {}
    if wanted:
        for path in [out / LEGACY_SAMPLES_FILE, *sorted(out.glob("samples.shard*of*.csv"))]:
            for b, rows in complete_batches(read_rows(path), n, batch_size).items():
                if b in wanted:
                    got.setdefault(b, rows)
    for b in sorted(got):
        store.write_part(frame(got[b]), k=b)
    return set(got)


def _sound_row(r: dict) -> bool:
    """A whole CSV row: every column present (a row cut off by a crash or a full disk lacks its last
    fields, or ends inside one) and the integer and boolean fields well formed."""
    if None in r or any(r.get(c) is None for c in SAMPLE_COLUMNS):
        return False
    return (r["batch"].strip().isdigit() and r["n_tokens"].strip().isdigit()
            and r["constrained"] in ("True", "False") and r["id"].startswith("s"))


def read_rows(path: Path) -> list[dict]:
    """The sound rows of a legacy samples CSV (a torn or malformed row is left out, so its batch is
    drawn again)."""
    if not path.is_file() or path.stat().st_size == 0:
        return []
    with open(path, newline="") as fh:
        return [r for r in csv.DictReader(fh) if _sound_row(r)]


def complete_batches(rows: list[dict], n: int, batch_size: int) -> dict[int, list[dict]]:
    """Rows grouped by batch, keeping only batches with all their rows (a batch cut off while it was
    being written, or one sized for another ``n``, is drawn again)."""
    groups: dict[int, dict[str, dict]] = {}
    for r in rows:
        groups.setdefault(int(r["batch"]), {})[r["id"]] = r
    size = {b: min(batch_size, n - b * batch_size) for b in groups}
    return {b: sorted(g.values(), key=lambda r: r["id"]) for b, g in groups.items() if len(g) == size[b] > 0}


def check_resume(out: Path, cfg: SampleConfig) -> None:
    """Refuse (``ValueError``, one line) to resume a folder that holds a run with other settings."""
    saved = out / "sample_config.json"
    if saved.is_file():
        old = json.loads(saved.read_text())
        default = {f.name: f.default for f in fields(SampleConfig)}  # keys added since the run began
        # runs from before physics decoding were drawn without it
        default.update(min_contact_ratio=0.0, volume_window="off", steer_contact_ratio=0.0,
                       steer_volume_window="off", steer_contact_floor=0.0, dead_end_redraws=0,
                       max_primitive_atoms=0, steer_anion_distance="off", steer_cation_distance="off",
                       redraw_below_floor=False)
        diff = {k: (old.get(k, default[k]), asdict(cfg).get(k)) for k in RESUME_KEYS
                if old.get(k, default[k]) != asdict(cfg).get(k)}
        if draws(old) != draws(asdict(cfg)):
            diff["decoder"] = (old.get("decoder", "lean"), cfg.decoder)
        if diff:
            raise ValueError(f"{out} holds a run with other settings {diff}; use a new --out to start afresh")
