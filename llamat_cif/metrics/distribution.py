"""Distribution distances, diversity and supply risk of a structure set (LeMat-GenBench's families).

All functions take the descriptor tables of :func:`llamat_cif.metrics.properties.structure_table`
(one row per structure, with ``spacegroup``, ``composition``, ``volume``, ``n_sites``) and a mask of
the structures that count (by convention the *valid* generated ones, against every parsed reference
structure). Definitions follow LeMat-GenBench (Betala et al., NeurIPS AI4Mat 2025, arXiv:2512.04562)
where it defines the metric; every deviation is a named parameter recorded in the metric's protocol.

* ``js_spacegroup``, ``js_crystal_system``: Jensen-Shannon *distance* (square root of the divergence,
  natural log, so 0 <= d <= sqrt(ln 2) = 0.833) between the frequency vectors over the 230 space groups
  / 7 crystal systems, as ``scipy.spatial.distance.jensenshannon`` computes it (LeMat-GenBench's
  ``JSDistance``). Space groups by spglib at ``symprec`` (default 0.1 Å, the tolerance CDVAE-era and
  MatterGen evaluations use; LeMat-GenBench's diversity module uses 0.01).
* ``js_elements``: the same over the 118 elements of the summed presence vectors (each structure
  adds 1 per element it holds; LeMat-GenBench "Composition"); ``js_element_counts``: summed atom
  counts of the cell compositions (LeMat-GenBench "CompositionCounts").
* ``wdist_volume_per_atom`` (Å³/atom): 1-D Wasserstein distance, as CDVAE's ``wdist_density``.
* ``element_diversity_vendi`` / ``spacegroup_diversity_vendi``: the Vendi score of a categorical
  histogram, exp(Shannon entropy) = the effective number of equally used elements (counted per atom) /
  space groups; ``elements_present``, ``spacegroups_present``: distinct elements over 118, distinct
  space groups over 230 (LeMat-GenBench's ``element_coverage_ratio`` / ``space_group_coverage``, renamed
  here so that "coverage" keeps meaning CDVAE's coverage).
* ``hhi_production_mean``, ``hhi_reserve_mean``: Herfindahl-Hirschman supply-risk index of each
  composition, the atom-fraction-weighted mean of its elements' HHI on the 0-10 scale (HHI / 1000;
  an element without a value counts 10, the maximum), averaged over the structures
  (LeMat-GenBench ``HHIProductionMetric`` / ``HHIReserveMetric``); ``hhi_production_low_risk``: share
  of structures at or below 3. Per-element values: pymatgen's ``analysis/hhi_data.csv`` (Gaultois et
  al., Chem. Mater. 2013; 78 elements).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial.distance import jensenshannon

from llamat_cif.metrics.metric import Metric, rate
from llamat_cif.metrics.properties import SYMPREC, wasserstein

N_ELEMENTS = 118
N_SPACEGROUPS = 230
CRYSTAL_SYSTEMS = ("triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal", "cubic")
_SYSTEM_LAST_SG = (2, 15, 74, 142, 167, 194, 230)
#: LeMat-GenBench's "low supply risk" bound on the 0-10 HHI scale
HHI_LOW_RISK = 3.0
HHI_MAX = 10.0
LEMAT = "LeMat-GenBench (arXiv:2512.04562)"


def crystal_system(spacegroup: int) -> str | None:
    """Crystal system of an international space-group number (None outside 1..230)."""
    if not 1 <= int(spacegroup) <= N_SPACEGROUPS:
        return None
    for name, last in zip(CRYSTAL_SYSTEMS, _SYSTEM_LAST_SG, strict=True):
        if spacegroup <= last:
            return name
    return None  # unreachable


def js_distance(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen-Shannon distance of two histograms (normalised here; natural log; 0 for equal shapes)."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    if p.sum() <= 0 or q.sum() <= 0:
        return math.nan
    return float(jensenshannon(p / p.sum(), q / q.sum()))


def vendi_categorical(counts: Sequence[float]) -> tuple[float, float]:
    """``(vendi, entropy)`` of a histogram: exp(H) and H in nats (0, 0 for an empty histogram)."""
    c = np.asarray([x for x in counts if x > 0], float)
    if c.sum() <= 0:
        return 0.0, 0.0
    p = c / c.sum()
    h = float(-(p * np.log(p)).sum())
    return math.exp(h), h


def _element_vectors(compositions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Summed presence and summed atom-count vectors over the 118 elements."""
    from pymatgen.core import Composition

    presence = np.zeros(N_ELEMENTS)
    counts = np.zeros(N_ELEMENTS)
    for f in compositions:
        if not isinstance(f, str) or not f:
            continue
        for el, amt in Composition(f).items():
            z = el.Z
            if 1 <= z <= N_ELEMENTS:
                presence[z - 1] += 1
                counts[z - 1] += amt
    return presence, counts


def _spacegroups(tab: pd.DataFrame, mask: np.ndarray) -> np.ndarray:
    sg = pd.to_numeric(tab.loc[mask, "spacegroup"], errors="coerce").fillna(0).astype(int).to_numpy()
    return sg[(sg >= 1) & (sg <= N_SPACEGROUPS)]


def distribution_distances(
    gen: pd.DataFrame,
    ref: pd.DataFrame,
    *,
    gen_mask: np.ndarray,
    ref_mask: np.ndarray,
    symprec: float = SYMPREC,
    generated_name: str = "valid",
) -> dict[str, Metric]:
    """Jensen-Shannon distances (space group, crystal system, elements) and W(volume per atom).

    Args:
        gen, ref: descriptor tables of the generated and the reference structures.
        gen_mask, ref_mask: rows that count on each side.
        symprec: the spglib tolerance the tables were made with (recorded).
        generated_name: what ``gen_mask`` selects (recorded).
    """
    gen_mask, ref_mask = np.asarray(gen_mask, bool), np.asarray(ref_mask, bool)
    sg_g, sg_r = _spacegroups(gen, gen_mask), _spacegroups(ref, ref_mask)
    proto = {"definition": f"{LEMAT} JSDistance: scipy jensenshannon, natural log (max sqrt(ln 2) = 0.833)",
             "generated": generated_name, "reference": "all parsed", "spglib_symprec_A": symprec}
    out: dict[str, Metric] = {}
    hist_g = np.bincount(sg_g, minlength=N_SPACEGROUPS + 1)[1:]
    hist_r = np.bincount(sg_r, minlength=N_SPACEGROUPS + 1)[1:]
    counts = {"generated": int(len(sg_g)), "reference": int(len(sg_r))}
    out["js_spacegroup"] = Metric("js_spacegroup", js_distance(hist_g, hist_r), unit="JS distance",
                                  counts=counts, protocol={**proto, "bins": "230 space groups"})
    cs_g = Counter(crystal_system(s) for s in sg_g)
    cs_r = Counter(crystal_system(s) for s in sg_r)
    out["js_crystal_system"] = Metric(
        "js_crystal_system", js_distance([cs_g[c] for c in CRYSTAL_SYSTEMS], [cs_r[c] for c in CRYSTAL_SYSTEMS]),
        unit="JS distance", counts=counts, protocol={**proto, "bins": "7 crystal systems"})
    pres_g, cnt_g = _element_vectors(gen.loc[gen_mask, "composition"].tolist())
    pres_r, cnt_r = _element_vectors(ref.loc[ref_mask, "composition"].tolist())
    n = {"generated": int(gen_mask.sum()), "reference": int(ref_mask.sum())}
    out["js_elements"] = Metric("js_elements", js_distance(pres_g, pres_r), unit="JS distance", counts=n,
                                protocol={**proto, "bins": "118 elements; each structure adds 1 per element "
                                          "it holds (LeMat-GenBench 'Composition')"})
    out["js_element_counts"] = Metric("js_element_counts", js_distance(cnt_g, cnt_r), unit="JS distance",
                                      counts=n, protocol={**proto, "bins": "118 elements; atoms per element of "
                                                          "the cell composition (LeMat-GenBench 'CompositionCounts')"})
    vpa_g = gen.loc[gen_mask, "volume"] / gen.loc[gen_mask, "n_sites"].replace(0, np.nan)
    vpa_r = ref.loc[ref_mask, "volume"] / ref.loc[ref_mask, "n_sites"].replace(0, np.nan)
    out["wdist_volume_per_atom"] = wasserstein("wdist_volume_per_atom", vpa_g, vpa_r, unit="A^3/atom",
                                               protocol={"generated": generated_name, "reference": "all parsed"})
    return out


def diversity(tab: pd.DataFrame, mask: np.ndarray, *, symprec: float = SYMPREC,
              set_name: str = "valid generated") -> dict[str, Metric]:
    """Element and space-group diversity of one set: Vendi scores, entropies and coverage of the table.

    Args:
        tab: descriptor table.
        mask: rows that count.
        symprec: the spglib tolerance of the table's space groups (recorded).
        set_name: what ``mask`` selects (the coverage denominators are 118 and 230, not the set).
    """
    mask = np.asarray(mask, bool)
    _, atom_counts = _element_vectors(tab.loc[mask, "composition"].tolist())
    sg = _spacegroups(tab, mask)
    sg_hist = np.bincount(sg, minlength=N_SPACEGROUPS + 1)[1:]
    v_el, h_el = vendi_categorical(atom_counts)
    v_sg, h_sg = vendi_categorical(sg_hist)
    proto = {"definition": f"{LEMAT} diversity: Vendi score of a categorical histogram = exp(Shannon entropy, nats)",
             "set": set_name}
    n = {"structures": int(mask.sum())}
    return {
        "element_diversity_vendi": Metric("element_diversity_vendi", v_el, unit="effective elements",
                                          counts=n, protocol={**proto, "histogram": "atoms per element",
                                                              "entropy_nats": h_el}),
        "elements_present": rate("elements_present", int((atom_counts > 0).sum()), N_ELEMENTS, "elements (Z 1-118)",
                                 counts=n, protocol={**proto, "counted": "distinct elements present",
                                                                "lemat_name": "element_coverage_ratio"}),
        "spacegroup_diversity_vendi": Metric("spacegroup_diversity_vendi", v_sg, unit="effective space groups",
                                             counts={**n, "with_spacegroup": int(len(sg))},
                                             protocol={**proto, "histogram": "structures per space group",
                                                       "entropy_nats": h_sg, "spglib_symprec_A": symprec}),
        "spacegroups_present": rate("spacegroups_present", int((sg_hist > 0).sum()), N_SPACEGROUPS, "space groups",
                                    counts=n, protocol={**proto, "counted": "distinct space groups present",
                                                        "lemat_name": "space_group_coverage",
                                                        "spglib_symprec_A": symprec}),
    }


@lru_cache(maxsize=1)
def hhi_table() -> dict[str, tuple[float, float]]:
    """``{symbol: (HHI production, HHI reserve)}`` on the 0-10 000 scale, from pymatgen's data file."""
    import pymatgen.analysis.hhi as hhi_mod

    out = {}
    for line in (Path(hhi_mod.__file__).parent / "hhi_data.csv").read_text().splitlines():
        if line and not line.startswith("#"):
            sym, prod, res = line.split(",")
            out[sym.strip()] = (float(prod), float(res))
    return out


def composition_hhi(formula: str) -> tuple[float, float]:
    """``(production, reserve)`` HHI of a composition on the 0-10 scale (LeMat-GenBench weighting:
    atom fractions; an element without data counts 10)."""
    from pymatgen.core import Composition

    table = hhi_table()
    frac = Composition(formula).fractional_composition
    prod = res = 0.0
    for el, x in frac.items():
        p, r = table.get(el.symbol, (HHI_MAX * 1000, HHI_MAX * 1000))
        prod += x * p / 1000
        res += x * r / 1000
    return prod, res


def supply_risk(tab: pd.DataFrame, mask: np.ndarray, *, set_name: str = "valid generated") -> dict[str, Metric]:
    """Mean production / reserve HHI (0-10) of the structures in ``mask`` and the low-risk share."""
    mask = np.asarray(mask, bool)
    forms = [f for f in tab.loc[mask, "composition"].tolist() if isinstance(f, str) and f]
    vals = np.array([composition_hhi(f) for f in forms]) if forms else np.empty((0, 2))
    known = set(hhi_table())
    missing = sorted({el for f in forms for el in _symbols(f)} - known)
    proto = {"definition": f"{LEMAT} HHI: atom-fraction-weighted element HHI / 1000 (0-10); element without data = 10",
             "data": "pymatgen analysis/hhi_data.csv (Gaultois et al., Chem. Mater. 2013)",
             "set": set_name, "elements_without_data": missing}
    n = {"structures": len(forms)}

    def mean(col: int) -> float | None:
        return float(vals[:, col].mean()) if len(vals) else None

    low = int((vals[:, 0] <= HHI_LOW_RISK).sum()) if len(vals) else 0
    return {
        "hhi_production_mean": Metric("hhi_production_mean", mean(0), unit="HHI/1000 (0-10)", counts=n, protocol=proto),
        "hhi_reserve_mean": Metric("hhi_reserve_mean", mean(1), unit="HHI/1000 (0-10)", counts=n, protocol=proto),
        "hhi_production_low_risk": rate("hhi_production_low_risk", low, len(forms), set_name,
                                        protocol={**proto, "threshold": HHI_LOW_RISK}),
    }


def _symbols(formula: str) -> list[str]:
    from pymatgen.core import Composition

    return [el.symbol for el in Composition(formula).elements]


__all__ = ["CRYSTAL_SYSTEMS", "SYMPREC", "composition_hhi", "crystal_system", "distribution_distances",
           "diversity", "hhi_table", "js_distance", "supply_risk", "vendi_categorical"]
