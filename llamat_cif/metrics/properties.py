"""Per-structure descriptors (elements, density, ...) and property-distribution distances.

Wasserstein distances follow CDVAE: density (g/cm^3) and number of distinct elements, between valid
generated structures and the reference set; formation energy per atom (eV/atom) when the stability
step ran (generated: the stability step's ``e_form_per_atom`` from the ML potential on the MP-compatible
scale; reference: the dataset's DFT ``formation_energy_per_atom``). CDVAE computed these on a random
1,000 valid samples; we use every valid sample (as crystal-text-llm does).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import wasserstein_distance

from llamat_cif.metrics.fingerprints import cache_dir, set_key
from llamat_cif.metrics.metric import Metric
from llamat_cif.runs import write_parquet

TABLE_VERSION = "2"  # 2: + spacegroup (spglib, SYMPREC) and composition (cell formula)
TABLE_COLUMNS = ["parsed", "formula", "composition", "elements", "n_elements", "n_sites", "density", "volume",
                 "spacegroup", "error"]
#: spglib tolerance (Å) of the ``spacegroup`` column (CDVAE-era and MatterGen evaluations use 0.1)
SYMPREC = 0.1


def describe_cif(cif: str | None) -> dict:
    """Parse one CIF and describe it; never raises (errors go to ``error``)."""
    row = {"parsed": False, "formula": "", "composition": "", "elements": "", "n_elements": 0, "n_sites": 0,
           "density": np.nan, "volume": np.nan, "spacegroup": 0, "error": ""}
    if not isinstance(cif, str) or not cif.strip():
        row["error"] = "no structure"
        return row
    try:
        from llamat_cif.cif import read_cif

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = read_cif(cif)
            comp = s.composition
            row.update(
                parsed=True,
                formula=comp.reduced_formula,
                composition=comp.formula,
                elements=" ".join(sorted(el.symbol for el in comp.elements)),
                n_elements=len(comp.elements),
                n_sites=len(s),
                density=float(s.density),
                volume=float(s.volume),
            )
            row["spacegroup"] = _spacegroup(s)
    except Exception as exc:  # noqa: BLE001 - a bad row must not stop the batch
        row["error"] = f"{type(exc).__name__}: {exc}"[:300]
    return row


def _spacegroup(structure) -> int:
    """International space-group number by spglib at :data:`SYMPREC` (0 where spglib fails)."""
    try:
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

        return int(SpacegroupAnalyzer(structure, symprec=SYMPREC).get_space_group_number())
    except Exception:  # noqa: BLE001 - no symmetry found is not a parse failure
        return 0


def prototype_label(structure) -> str:
    """A crystal's structure family: anonymous reduced formula and space group at :data:`SYMPREC`
    (``"ABC 189"`` for ZrNiAl-type DyInAg and LaInAg alike, ``"AB 225"`` for rock salt)."""
    return f"{structure.composition.anonymized_formula} {_spacegroup(structure)}"


def structure_table(
    cifs: Sequence[str],
    *,
    cache: str | os.PathLike | None = None,
    use_cache: bool = True,
    show_progress: bool = False,
    label: str = "parsing structures",
) -> pd.DataFrame:
    """Describe every structure of a set (row-aligned), cached beside its fingerprints.

    Columns: ``parsed, formula`` (reduced), ``composition`` (cell formula), ``elements``
    (space-separated symbols), ``n_elements, n_sites, density`` (g/cm^3), ``volume`` (A^3),
    ``spacegroup`` (spglib at :data:`SYMPREC`; 0 when unknown), ``error``.
    """
    cifs = ["" if not isinstance(c, str) else c for c in cifs]
    path = cache_dir(cache) / set_key(cifs) / f"structures_v{TABLE_VERSION}.parquet"
    if use_cache and path.exists():
        df = pd.read_parquet(path)
        if len(df) == len(cifs):
            return df
    from llamat_cif.progress import progress_bar

    with progress_bar(label, enabled=show_progress and len(cifs) > 500, transient=True) as bar:
        df = pd.DataFrame([describe_cif(c) for c in bar.track(cifs)], columns=TABLE_COLUMNS)
    if use_cache:
        write_parquet(df, path)  # whole or absent; a per-process temporary, so concurrent benchmarks never share one
    return df


def wasserstein(
    name: str,
    generated: Sequence[float],
    reference: Sequence[float],
    *,
    unit: str,
    protocol: dict | None = None,
) -> Metric:
    """1-D Wasserstein (earth mover's) distance between two samples, NaNs dropped.

    Args:
        name: metric name.
        generated: values of the generated structures (valid ones, by convention).
        reference: values of the reference structures.
        unit: unit of the values (the distance has the same unit).
        protocol: extra protocol entries to record.
    """
    g = np.asarray(generated, dtype=float)
    r = np.asarray(reference, dtype=float)
    g, r = g[np.isfinite(g)], r[np.isfinite(r)]
    value = float(wasserstein_distance(g, r)) if len(g) and len(r) else None
    return Metric(name, value, None, None, None, unit,
                  {"generated": int(len(g)), "reference": int(len(r))}, protocol or {})
