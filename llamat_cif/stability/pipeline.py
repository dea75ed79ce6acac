"""Relax + score many structures, streaming rows to a parquet file that a rerun resumes.

``run_stability`` is what ``llamat-cif stability`` and the ``screen`` command call: it reads
structures from any of the supported inputs, skips ids already in the output file, relaxes the rest
(process pool or in-process), converts energies to formation energies and E_hull on the reference
hull, and writes every batch as a part of :class:`llamat_cif.runs.RunStore` (``stability.parts/``,
each part whole or absent, so an interrupted run loses no finished row); at the end the parts are
committed into ``stability.parquet``. The protocol and the summary
(:func:`llamat_cif.stability.summary.summarize`, plus :mod:`llamat_cif.stability.agreement`'s
counts when several potentials score) are written to ``stability_summary.json`` beside it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llamat_cif.progress import progress_bar
from llamat_cif.protocol import E_HULL_METASTABLE, environment_info
from llamat_cif.runs import RunStore
from llamat_cif.stability.agreement import agreement_summary, cross_score, potential_names
from llamat_cif.stability.hull import Hull, HullError, mp2020_corrected_energy
from llamat_cif.stability.potentials import Potential, auto_device, load_potential
from llamat_cif.stability.relax import (
    RelaxConfig,
    auto_workers,
    error_row,
    relax_many,
    relax_threads,
)
from llamat_cif.stability.summary import summarize

STABILITY_COLUMNS = [
    "id", "formula", "n_sites", "n_sites_input", "converged", "n_steps", "wall_s", "cpu_s", "energy_initial_per_atom",
    "energy_per_atom", "energy_corrected_per_atom", "e_form_per_atom", "e_hull", "volume_change",
    "volume_rescale", "relaxed_cif", "error",
]
#: the packages whose versions ``stability_summary.json`` records
STABILITY_PACKAGES = ("llamat-cif", "chgnet", "matgl", "pymatgen", "ase", "torch")


# --------------------------------------------------------------------------------- inputs


def read_structures_input(path: str | Path, *, data_dir: str | Path | None = None) -> pd.DataFrame:
    """Read structures to score into a table ``id, cif, read_error`` (plus the input's extras).

    Every input :func:`llamat_cif.metrics.sources.load_structure_set` reads is accepted (a folder
    of ``.cif`` files searched recursively, a ``.zip``, a ``.cif`` file, a CSV/parquet with a ``cif``
    column, an ASE database or trajectory, a registry split), and every structure in it becomes a
    row: a file that cannot be read (binary, too large, unreadable) keeps its id and a
    ``read_error``, which :func:`run_stability` writes as an error row. A run folder with
    ``samples.parquet`` (or an older run's ``samples.csv``) gives its rows, only the valid ones
    when ``validity.parquet`` says which.

    Raises:
        SourceError: the input as a whole cannot be read, or ids repeat (they name rows and resume).
    """
    from llamat_cif.metrics.sources import load_structure_set

    sset = load_structure_set(path, data_dir=data_dir)
    df = sset.table
    if sset.run_dir is not None:
        vp = sset.run_dir / "validity.parquet"
        if vp.exists():
            v = pd.read_parquet(vp)
            if "valid" in v.columns and "id" in v.columns:
                ok = set(v.loc[v["valid"].astype(bool), "id"].astype(str))
                df = df[df["id"].astype(str).isin(ok)]
        df = df[["id", "cif", "read_error"]]
    return df.reset_index(drop=True)


def input_problem(cif: Any) -> tuple[Any, str]:
    """``(Structure, "")`` for usable CIF text, else ``(None, why)``: the validators' parse step.

    The same limits ``llamat-cif validate`` applies run before any relaxation: text length and site
    count (a 200,000-atom cell is refused before any O(n^2) work), stated cell parameters that are
    negative, non-finite or absurd, lattice vectors beyond the validators' bound. A pymatgen
    ``Structure`` passes through the same size and lattice checks.
    """
    from pymatgen.core import Structure

    from llamat_cif.validators.parse import parse_text
    from llamat_cif.validators.structural import sanity_problem

    if isinstance(cif, Structure):
        problem = sanity_problem(cif)
        return (None, f"input: {problem}") if problem else (cif, "")
    parsed = parse_text(cif, fmt="cif")
    if parsed.error:
        return None, f"input: {parsed.error}"
    return parsed.structure, ""


# --------------------------------------------------------------------------------- scoring


def score_row(row: dict, hull: Hull | None, potential: Potential) -> dict:
    """Add ``energy_corrected_per_atom``, ``e_form_per_atom`` and ``e_hull`` to a relaxation row.

    Scoring failures (element outside the hull, MP2020 rejection) become the row's ``error``.
    """
    row = dict(row)
    row.setdefault("energy_corrected_per_atom", np.nan)
    row.setdefault("e_form_per_atom", np.nan)
    row.setdefault("e_hull", np.nan)
    if row.get("error") or hull is None or not row.get("relaxed_cif"):
        return row
    try:
        from llamat_cif.cif import read_cif

        s = read_cif(row["relaxed_cif"])
        e = float(row["energy_per_atom"])
        if potential.needs_mp2020_correction:
            e = mp2020_corrected_energy(s, e * len(s)) / len(s)
        row["energy_corrected_per_atom"] = e
        row["e_form_per_atom"] = hull.formation_energy_per_atom(s.composition, e)
        row["e_hull"] = hull.e_above_hull(s.composition, e)
    except (HullError, ValueError, KeyError) as exc:
        row["error"] = f"hull: {type(exc).__name__}: {exc}"
    return row


def check_hull_compatible(potential: Potential, hull: Hull, *, is_mp_reference: bool) -> None:
    """Refuse to score PBE/r2SCAN-scale energies against the Materials Project hull."""
    if is_mp_reference and not potential.mp_hull_compatible:
        raise HullError(
            f"potential {potential.name} predicts {potential.energy_scale!r} energies, which are not on the "
            "Materials Project scale; score them against a hull of the same functional (--hull FILE)."
        )


class StabilityResumeError(ValueError):
    """The output file holds rows relaxed under other settings; resuming would mix protocols."""


def check_resume_compatible(summary_path: str | Path, config: StabilityConfig) -> None:
    """Refuse to resume a stability file written with another potential, hull or relaxer setting.

    Rows already in the file are never relaxed again, so a rerun with e.g. ``--rescale-volume``
    or another ``--fmax`` would silently keep the old rows under the new protocol's name.

    Args:
        summary_path: the ``*_summary.json`` written beside the rows by :func:`run_stability`.
        config: the settings of the run about to resume.

    Raises:
        StabilityResumeError: when a recorded setting differs.
    """
    path = Path(summary_path)
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text()).get("config") or {}
    except (OSError, ValueError):
        return
    # settings absent from older files had their (then only) default value; rows from before the
    # primitive-cell reduction were relaxed as given
    old_relax = {**asdict(RelaxConfig()), "primitive": False, **(old.get("relax") or {})}
    new_relax = asdict(config.relax)
    diffs = [f"relax.{k}: {old_relax.get(k)!r} -> {v!r}" for k, v in new_relax.items() if old_relax.get(k) != v]
    for key in ("potential", "hull"):
        if key in old and old[key] != getattr(config, key):
            diffs.append(f"{key}: {old[key]!r} -> {getattr(config, key)!r}")
    if diffs:
        raise StabilityResumeError(
            f"{path.parent} already holds relaxations made with other settings ({'; '.join(diffs)}); "
            "use another output folder, or delete its stability files to start over."
        )


@dataclass(frozen=True)
class StabilityConfig:
    """Settings of a relax + E_hull run (written beside the results).

    ``potential`` may list several, comma-separated (``"chgnet,sevennet-0"``): the first relaxes,
    every one scores the relaxed cell, and rows where their E_hull differ by more than
    ``disagreement`` eV/atom are flagged (:func:`cross_score`).
    """

    potential: str = "chgnet"
    hull: str | None = None  # None: MP-20 reference hull from the data dir; else a file
    relax: RelaxConfig = field(default_factory=RelaxConfig)
    n_workers: int = 1  # 0: auto (relax.auto_workers: CPU cores, at most one per 8 structures)
    batch_size: int = 8
    device: str | None = None
    e_hull_metastable: float = E_HULL_METASTABLE
    threads: int | None = None  # torch threads of an in-process run (n_workers 1); None: 1 on CPU, else torch's
    disagreement: float = 0.1  # agreement mode: flag rows whose E_hull differs by more (eV/atom)


def run_stability(
    items: pd.DataFrame | Iterable[tuple[str, Any]],
    out_dir: str | Path,
    config: StabilityConfig = StabilityConfig(),
    *,
    potential: Potential | None = None,
    hull: Hull | None = None,
    data_dir: str | Path | None = None,
    progress: bool = True,
    filename: str = "stability.parquet",
    executor: Any = None,
) -> pd.DataFrame:
    """Relax and score structures, resuming from ``out_dir/stability.parquet``.

    Every input first passes :func:`input_problem` (the validators' parse step and limits); an input
    it refuses, or a table row with a ``read_error``, becomes an error row without relaxation.

    Args:
        items: a table with ``id`` and ``cif`` columns (``read_error`` optional), or
            ``(id, Structure|CIF)`` pairs. Ids must be unique.
        out_dir: output folder (``stability.parquet``, ``stability_summary.json``).
        config: settings.
        potential: an already loaded relaxing potential (else loaded from ``config.potential``'s
            first name; the others are loaded here as check potentials).
        hull: an already built hull (else ``config.hull`` or the MP-20 reference hull).
        data_dir: data folder for the reference hull.
        progress: show a rich progress bar.
        filename: name of the rows file inside ``out_dir``.
        executor: a :class:`llamat_cif.executors.RayExecutor` to relax on Ray (scored and written
            here, as a local run); None relaxes here or in ``config.n_workers`` processes.

    Returns:
        All rows in the output file (earlier runs included).

    Raises:
        StabilityResumeError: ``out_dir`` holds rows relaxed with other settings.
        ValueError: an id occurs more than once.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / filename.replace(".parquet", "_summary.json")
    if (out / filename).exists():
        check_resume_compatible(summary_path, config)
    names = potential_names(config.potential)
    primary = names[0]
    # on Ray the workers load the potential; here it only declares its energy scale for the hull
    pot = potential or load_potential(primary, device="cpu" if executor is not None else config.device)
    checks = [load_potential(n, device=config.device) for n in names[1:]]
    is_mp = hull is None and config.hull is None
    if hull is None:
        hull = Hull.from_file(config.hull) if config.hull else Hull.from_data_dir(data_dir)
    for p_ in (pot, *checks):
        check_hull_compatible(p_, hull, is_mp_reference=is_mp)

    if isinstance(items, pd.DataFrame):
        errs = items["read_error"].fillna("").astype(str) if "read_error" in items.columns else [""] * len(items)
        triples = list(zip(items["id"].astype(str), items["cif"], errs, strict=True))
    else:
        triples = [(str(i), s, "") for i, s in items]
    ids = [t[0] for t in triples]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"{len(dup)} ids occur more than once (e.g. {', '.join(dup[:3])}): ids name the rows "
                         "and the resume, so each must be unique")
    # rows already written (committed, or parts of an interrupted run) are never relaxed again
    store = RunStore(out / filename, columns=STABILITY_COLUMNS)
    done = store.done_ids()
    todo = [t for t in triples if t[0] not in done]
    if config.n_workers == 0:  # auto: by the work left and the cores (rows do not depend on it)
        config = replace(config, n_workers=auto_workers(len(todo), config.device))

    protocol = {
        "relax": config.relax.protocol(), **pot.protocol(), **hull.protocol(),
        "e_hull_metastable": config.e_hull_metastable, "n_workers": config.n_workers,
        "executor": executor.describe() if executor is not None else "local",
        "torch_threads": _torch_threads(config),
        "environment": environment_info(STABILITY_PACKAGES),
    }
    if checks:
        protocol["agreement"] = {
            "relaxed_with": pot.name, "scored_with": [pot.name, *(c.name for c in checks)],
            "check": "single point of each further potential on the relaxed cell, same hull",
            "disagreement_threshold_ev_atom": config.disagreement,
            "check_potentials": [c.protocol() for c in checks],
        }
    t0 = time.time()
    batch: list[dict] = []
    bar = progress_bar(enabled=progress)
    pot_arg: Potential | str = pot if config.n_workers <= 1 else primary
    refused: list[dict] = []

    def checked():
        # the validators' input checks, before any relaxation; refused inputs become error rows
        for sid, obj, read_error in todo:
            structure, why = (None, f"input: {read_error}") if read_error else input_problem(obj)
            if structure is None:
                refused.append(error_row(sid, why))
                continue
            yield sid, structure

    def flush(force: bool = False) -> None:
        nonlocal batch
        if refused:
            batch.extend(refused)
            bar.advance(task, len(refused))
            refused.clear()
        if batch and (force or len(batch) >= config.batch_size):
            store.write_part(batch)  # costs the batch, not the table
            batch = []

    try:
        with bar:
            task = bar.add_task("relax + E_hull", total=len(triples), completed=len(triples) - len(todo))
            for row in relax_many(checked(), pot_arg, config.relax, n_workers=config.n_workers,
                                  device=config.device, threads=config.threads, executor=executor):
                row = score_row(row, hull, pot)
                if checks:
                    row = cross_score(row, checks, hull, threshold=config.disagreement)
                batch.append(row)
                bar.advance(task)
                flush()
            flush(force=True)
    finally:
        # also on Ctrl-C or an error: the finished rows go into stability.parquet (a killed process
        # leaves them in the parts, which the next run reads)
        store.commit()
    df = store.read()
    summary = summarize(df, e_hull_metastable=config.e_hull_metastable)
    agreement = agreement_summary(df, primary=pot.name, threshold=config.disagreement,
                                  e_hull_metastable=config.e_hull_metastable)
    if agreement is not None:
        summary["agreement"] = agreement
    summary["protocol"] = protocol
    summary["config"] = {**asdict(config), "relax": asdict(config.relax)}
    summary["wall_s_this_run"] = time.time() - t0
    summary_path.write_text(json.dumps(summary, indent=2, default=str))
    return df


def _torch_threads(config: StabilityConfig) -> int | None:
    """Intra-op threads each relaxation runs with (pool workers: 1)."""
    if config.n_workers > 1:
        return 1
    if (n := relax_threads(config.threads, auto_device(config.device))) is not None:
        return n
    try:
        import torch

        return int(torch.get_num_threads())
    except ImportError:  # pragma: no cover - torch is a core dependency
        return None


def iter_pairs(df: pd.DataFrame) -> Iterator[tuple[str, str]]:
    """``(id, cif)`` pairs of a table."""
    yield from zip(df["id"].astype(str), df["cif"], strict=True)
