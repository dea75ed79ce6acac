"""Structural validity as CDVAE defines it, plus the sanity limits that keep the checks bounded.

CDVAE (``structure_validity``): valid when the smallest distance between two different sites,
nearest periodic images included (pymatgen ``distance_matrix``), is at least 0.5 Å and the cell
volume is at least 0.1 Å^3. A site's distance to its own image (a lattice vector) is not part of
CDVAE's definition; ``include_self_images=True`` adds it.
"""

from __future__ import annotations

import math

import numpy as np

from llamat_cif.protocol import CDVAE_MIN_DISTANCE
from llamat_cif.validators.result import CheckResult

#: Sites above which a structure is rejected before any neighbour list or distance matrix is
#: built: a 1000-site distance matrix is 8 MB and ms to compute; a million sites would be 8 TB.
MAX_SITES = 1000
#: Lattice lengths (Å) outside which a cell is nonsense for a crystal generator; CrystaLLM's
#: "sensible" check uses the same bounds. They also keep spglib and neighbour searches finite.
MIN_LATTICE_LENGTH = 0.5
MAX_LATTICE_LENGTH = 1000.0


def sanity_problem(
    structure,
    *,
    max_sites: int = MAX_SITES,
    max_lattice_length: float = MAX_LATTICE_LENGTH,
) -> str | None:
    """Why a parsed structure cannot be checked at all (``None`` when it can).

    Catches what pymatgen accepts silently but no check can use: non-finite numbers, a degenerate
    cell, more than ``max_sites`` sites, lattice lengths above ``max_lattice_length`` Å, partial
    occupancies and non-element species.
    """
    n = len(structure)
    if n == 0:
        return "structure has no sites"
    if n > max_sites:
        return f"{n} sites exceeds the limit of {max_sites} (max_sites)"
    m = structure.lattice.matrix
    if not np.all(np.isfinite(m)):
        return "non-finite lattice parameters"
    abc = structure.lattice.abc
    if max(abc) > max_lattice_length:
        return f"lattice length {max(abc):.3g} Å exceeds {max_lattice_length} Å (max_lattice_length)"
    vol = abs(float(np.linalg.det(m)))
    if not math.isfinite(vol) or vol <= 1e-8:
        return "degenerate cell (zero volume)"
    if not np.all(np.isfinite(structure.frac_coords)):
        return "non-finite atomic coordinates"
    if not structure.is_ordered:
        return "partial occupancies (disordered structure) are not a generated crystal"
    for site in structure:
        sp = site.specie
        if not hasattr(sp, "Z") or getattr(sp, "Z", 0) <= 0 or type(sp).__name__.startswith("Dummy"):
            return f"unknown element {sp!s}"
    return None


def min_interatomic_distance(structure, *, include_self_images: bool = False) -> float:
    """Smallest distance (Å) between two sites, nearest periodic images included.

    With one site and ``include_self_images=False`` there is no pair: returns ``inf``.
    """
    n = len(structure)
    best = math.inf
    if n > 1:
        d = structure.distance_matrix
        d[np.diag_indices(n)] = math.inf
        best = float(d.min())
    if include_self_images:
        best = min(best, _shortest_lattice_vector(structure.lattice))
    return best


def _shortest_lattice_vector(lattice) -> float:
    red = lattice.get_lll_reduced_lattice()
    m = red.matrix
    best = math.inf
    for i in (-1, 0, 1):
        for j in (-1, 0, 1):
            for k in (-1, 0, 1):
                if i or j or k:
                    best = min(best, float(np.linalg.norm(i * m[0] + j * m[1] + k * m[2])))
    return best


def structural_validity(
    structure,
    *,
    min_distance: float = CDVAE_MIN_DISTANCE,
    min_volume: float = 0.1,
    include_self_images: bool = False,
    max_sites: int = MAX_SITES,
) -> CheckResult:
    """CDVAE structural validity: all interatomic distances >= ``min_distance`` Å and volume >= ``min_volume`` Å^3.

    Args:
        structure: a pymatgen ``Structure``.
        min_distance: CDVAE's ``cutoff`` (0.5 Å).
        min_volume: CDVAE's volume floor (0.1 Å^3).
        include_self_images: also count a site's distance to its own periodic image (not CDVAE).
        max_sites: refuse (invalid, with the reason) above this many sites, before any distance
            matrix is built.

    Returns:
        A :class:`CheckResult` with ``details`` ``min_distance`` (Å) and ``volume`` (Å^3).
    """
    n = len(structure)
    if n > max_sites:
        return CheckResult(False, f"{n} sites exceeds max_sites={max_sites}", {})
    volume = abs(float(np.linalg.det(structure.lattice.matrix)))
    if not math.isfinite(volume):
        return CheckResult(False, "non-finite cell volume", {})
    dmin = min_interatomic_distance(structure, include_self_images=include_self_images)
    details = {"min_distance": dmin, "volume": volume}
    if not math.isfinite(dmin) and n > 1:
        return CheckResult(False, "non-finite interatomic distance", details)
    if volume < min_volume:
        return CheckResult(False, f"cell volume {volume:.3g} Å^3 < {min_volume}", details)
    if dmin < min_distance:
        return CheckResult(False, f"interatomic distance {dmin:.3g} Å < {min_distance}", details)
    return CheckResult(True, "distances and volume above thresholds", details)
