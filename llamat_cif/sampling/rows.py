"""The ``samples.csv`` table of a run: its columns, and reading it back to resume.

Batch ``k`` of a run is always drawn with seed ``(seed, k)``; these helpers find the batches a
samples file (or its shards' files) already holds whole, so :func:`llamat_cif.sampling.generate`
draws only the missing ones, and refuse to resume a folder that holds a run with other settings.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, fields
from pathlib import Path

from llamat_cif.sampling.config import SampleConfig

SAMPLE_COLUMNS = ["id", "text", "fmt", "cif", "error", "target_formula", "target_spacegroup", "seed",
                  "batch", "n_tokens", "constrained"]


def _sound_row(r: dict) -> bool:
    """A whole row: every column present (a row cut off by a crash or a full disk lacks its last
    fields, or ends inside one) and the integer and boolean fields well formed."""
    if None in r or any(r.get(c) is None for c in SAMPLE_COLUMNS):
        return False
    return (r["batch"].strip().isdigit() and r["n_tokens"].strip().isdigit()
            and r["constrained"] in ("True", "False") and r["id"].startswith("s"))


def read_rows(path: Path) -> list[dict]:
    """The sound rows of a samples file (a torn or malformed row is left out, so its batch is
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


def write_rows(path: Path, batches: dict[int, list[dict]]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=SAMPLE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for b in sorted(batches):
            writer.writerows(batches[b])
    tmp.replace(path)


def shard_files(out: Path) -> list[Path]:
    return sorted(out.glob("samples.shard*of*.csv"))


def check_resume(out: Path, cfg: SampleConfig) -> None:
    saved = out / "sample_config.json"
    if saved.is_file():
        old = json.loads(saved.read_text())
        keys = ("model", "formula", "spacegroup", "temperature", "top_p", "top_k", "batch_size", "seed",
                "constrained", "min_distance", "charge_balanced", "fmt", "max_new_tokens",
                "min_contact_ratio", "volume_window", "steer_contact_ratio", "steer_volume_window",
                "steer_contact_floor")
        default = {f.name: f.default for f in fields(SampleConfig)}  # keys added since the run began
        # runs from before physics decoding were drawn without it
        default.update(min_contact_ratio=0.0, volume_window="off", steer_contact_ratio=0.0,
                       steer_volume_window="off", steer_contact_floor=0.0)
        diff = {k: (old.get(k, default[k]), asdict(cfg).get(k)) for k in keys
                if old.get(k, default[k]) != asdict(cfg).get(k)}
        if diff:
            raise ValueError(f"{out} holds a run with other settings {diff}; use a new --out to start afresh")
