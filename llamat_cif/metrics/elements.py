"""Coverage and precision element by element across the periodic table.

For each element E:

* ``recall``: covered reference structures containing E / reference structures containing E;
* ``precision``: generated structures containing E that lie within the coverage cutoffs of some
  reference structure / valid generated structures containing E;
* ``freq_generated`` / ``freq_reference``: share of valid generated / reference structures that
  contain E (so a model that never writes Tc shows recall 0 *and* frequency 0 for Tc).

The flags come from :func:`llamat_cif.metrics.coverage.coverage`, so the per-element numbers use
exactly the cutoffs, pairing and masks of the headline coverage.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from pymatgen.core.periodic_table import Element


def element_matrix(elements: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Presence matrix from space-separated element strings.

    Returns:
        ``(symbols, M)`` with ``M[i, j]`` True when structure ``i`` contains ``symbols[j]``.
        Symbols are sorted by atomic number.
    """
    sets = [set(str(e).split()) if isinstance(e, str) else set() for e in elements]
    present = set().union(*sets) if sets else set()
    symbols = sorted(present, key=lambda s: (Element(s).Z if Element.is_valid_symbol(s) else 999, s))
    index = {s: j for j, s in enumerate(symbols)}
    m = np.zeros((len(sets), len(symbols)), dtype=bool)
    for i, st in enumerate(sets):
        for s in st:
            m[i, index[s]] = True
    return symbols, m


def per_element_coverage(
    ref_elements: Sequence[str],
    ref_covered: np.ndarray,
    gen_elements: Sequence[str],
    gen_precise: np.ndarray,
    *,
    ref_mask: np.ndarray | None = None,
    gen_mask: np.ndarray | None = None,
) -> pd.DataFrame:
    """Per-element recall, precision and frequency.

    Args:
        ref_elements: per reference structure, space-separated element symbols.
        ref_covered: per reference structure, covered by the generated set.
        gen_elements: per generated structure, space-separated element symbols.
        gen_precise: per generated structure, within the cutoffs of some reference structure.
        ref_mask: reference rows in the recall denominator (default all).
        gen_mask: generated rows in the precision denominator (default all; pass the valid rows).

    Returns:
        One row per element seen on either side, sorted by atomic number, with columns
        ``element, Z, n_reference, n_reference_covered, recall, n_generated,
        n_generated_precise, precision, freq_reference, freq_generated``. Rates are NaN where
        the denominator is 0.
    """
    ref_covered = np.asarray(ref_covered, bool)
    gen_precise = np.asarray(gen_precise, bool)
    rmask = np.ones(len(ref_covered), bool) if ref_mask is None else np.asarray(ref_mask, bool)
    gmask = np.ones(len(gen_precise), bool) if gen_mask is None else np.asarray(gen_mask, bool)
    ref_syms, ref_m = element_matrix(ref_elements)
    gen_syms, gen_m = element_matrix(gen_elements)
    symbols = sorted(set(ref_syms) | set(gen_syms),
                     key=lambda s: (Element(s).Z if Element.is_valid_symbol(s) else 999, s))
    ri = {s: j for j, s in enumerate(ref_syms)}
    gi = {s: j for j, s in enumerate(gen_syms)}
    n_ref, n_gen = int(rmask.sum()), int(gmask.sum())
    rows = []
    for s in symbols:
        has_r = ref_m[:, ri[s]] & rmask if s in ri else np.zeros(len(rmask), bool)
        has_g = gen_m[:, gi[s]] & gmask if s in gi else np.zeros(len(gmask), bool)
        nr, ng = int(has_r.sum()), int(has_g.sum())
        nrc, ngp = int((has_r & ref_covered).sum()), int((has_g & gen_precise).sum())
        rows.append({
            "element": s,
            "Z": Element(s).Z if Element.is_valid_symbol(s) else 0,
            "n_reference": nr,
            "n_reference_covered": nrc,
            "recall": nrc / nr if nr else np.nan,
            "n_generated": ng,
            "n_generated_precise": ngp,
            "precision": ngp / ng if ng else np.nan,
            "freq_reference": nr / n_ref if n_ref else np.nan,
            "freq_generated": ng / n_gen if n_gen else np.nan,
        })
    return pd.DataFrame(rows, columns=["element", "Z", "n_reference", "n_reference_covered", "recall",
                                       "n_generated", "n_generated_precise", "precision",
                                       "freq_reference", "freq_generated"])
