"""Physical scales for crystal geometry: covalent contacts and composition-based volume.

CDVAE's structural validity (every distance >= 0.5 Å) is a convention, not physics: a Na-Cl pair at
0.6 Å passes it. This module measures geometry on chemical scales instead, and holds the two
calibrated windows the constrained decoder (:mod:`llamat_cif.sampling`) enforces:

* **Contacts.** Every pair of atoms must keep ``d_ij >= f * (r_i + r_j)`` with ``r`` the covalent
  radii of Cordero et al. (Dalton Trans. 2008, as tabulated by ASE: ``ase.data.covalent_radii``).
  ``f`` (:data:`CONTACT_RATIO`) is the largest two-decimal value that at least 99.9 % of MP-20 train
  structures (available subset) satisfy. A hard rule alone piles atoms up at ``f``: the sampler
  also *steers*, drawing each coordinate among the tokens that keep a wider margin
  (:data:`steer_ratio_default`, the 5th percentile of MP-20 train, 0.81) whenever some token does
  (within the top-p nucleus first, else from the whole tempered distribution), and falls back to the
  hard rule otherwise.
  Covalent radii let two anions sit at a bond length, so an anion site is first steered to keep
  the 5th percentile of MP-20 train's smallest same-element distance (:func:`anion_steer_default`).
* **Volume.** (The last cell length is also steered into the central 90 % of MP-20 train's
  volume ratios, :func:`volume_steer_default`, when the model's tokens allow.) Volume per atom must lie in ``[lo, hi] * v_pred`` with ``v_pred`` a composition-based
  estimate: the atom-fraction-weighted sum of per-element volume increments fitted on MP-20 train
  (non-negative least squares, see ``benchmarks/physics/calibrate.py``), which predicts MP-20 test
  better than elemental ground-state volumes. The window holds at least 99.5 % of MP-20 train.

Both calibrations, their sources and their measured coverage on MP-20 test live in
``resources/physics_calibration.json`` (written by ``benchmarks/physics/calibrate.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

CALIBRATION_FILE = Path(__file__).resolve().parent / "resources" / "physics_calibration.json"

#: The threshold the issue and the benchmark report use for "short contact" (a pair closer than
#: 0.7 x its covalent-radius sum); independent of the calibrated decoding factor.
SHORT_CONTACT_RATIO = 0.7


@lru_cache(maxsize=1)
def calibration() -> dict:
    """The shipped calibration (contact factor, volume increments and window) as a dict."""
    if not CALIBRATION_FILE.is_file():
        raise FileNotFoundError(f"{CALIBRATION_FILE} is missing: run benchmarks/physics/calibrate.py")
    return json.loads(CALIBRATION_FILE.read_text())


def volume_steer_default() -> tuple[float, float]:
    """Calibrated steering range of the volume ratio: the central 90 % of MP-20 train. The last
    cell length prefers it whenever the model's tokens allow."""
    w = calibration()["volume"]["steer_window"]
    return float(w[0]), float(w[1])


def contact_ratio_default() -> float:
    """Calibrated ``f`` of the contact rule (>= 99.9 % of MP-20 train pass)."""
    return float(calibration()["contacts"]["ratio"])


def steer_ratio_default() -> float:
    """Calibrated steering margin: the 5th percentile of MP-20 train's smallest contact ratio. The
    sampler prefers coordinates that keep it whenever some token does (nucleus first)."""
    return float(calibration()["contacts"]["steer_ratio"])


def anion_steer_default() -> dict[str, float]:
    """Calibrated anion-anion steering distances (Å) per anion: the 5th percentile of MP-20
    train's smallest same-element distance (O 2.39, F 2.39, Cl 3.12 ...). The covalent rule lets
    two O atoms sit at a bond length; ionic solids keep them apart."""
    return {str(k): float(v) for k, v in calibration()["anion_steer"]["distance_A"].items()}


def cation_steer_default() -> dict[str, float]:
    """Calibrated same-element steering distances (Å) for every other element that at least 20
    MP-20 train structures hold (metals, metalloids, C, H ...; "cations" for short): the 5th
    percentile of their smallest same-element distance, so metal-metal bonds keep their own scale."""
    return {str(k): float(v) for k, v in calibration()["cation_steer"]["distance_A"].items()}


def volume_window_default() -> tuple[float, float]:
    """Calibrated ``(lo, hi)`` factors on the predicted volume per atom (>= 99.5 % of MP-20 train)."""
    w = calibration()["volume"]["window"]
    return float(w[0]), float(w[1])


@lru_cache(maxsize=256)
def covalent_radius(element: str) -> float:
    """Covalent radius (Å) of an element symbol, Cordero et al. 2008 (via ``ase.data``)."""
    from ase.data import atomic_numbers, covalent_radii

    try:
        return float(covalent_radii[atomic_numbers[element]])
    except KeyError:
        raise ValueError(f"no covalent radius for {element!r}") from None


def _symbol(site_species) -> str:
    # the majority species of a (possibly disordered) site
    sp = max(site_species.items(), key=lambda kv: kv[1])[0]
    return getattr(sp, "symbol", None) or sp.element.symbol


def min_contact_ratio(structure) -> float:
    """Smallest ``d_ij / (r_i + r_j)`` over all atom pairs (periodic images included).

    Returns ``inf`` for a one-atom cell whose lattice vectors are all longer than twice its radius
    search (no neighbour within 2 x the largest covalent-radius sum).
    """
    symbols = [_symbol(s.species) for s in structure]
    radii = np.array([covalent_radius(e) for e in symbols])
    cutoff = 2.0 * 2.0 * float(radii.max())
    centers, neighbors, _, dist = structure.get_neighbor_list(cutoff)
    if len(dist) == 0:
        return float("inf")
    keep = dist > 1e-8  # a site never neighbours itself; coincident sites count as ratio 0
    ratios = dist / (radii[centers] + radii[neighbors])
    if not keep.all():
        return 0.0
    return float(ratios.min())


def has_short_contact(structure, ratio: float = SHORT_CONTACT_RATIO) -> bool:
    """A pair of atoms sits closer than ``ratio`` x its covalent-radius sum."""
    return min_contact_ratio(structure) < ratio


@dataclass(frozen=True)
class VolumeModel:
    """Volume per atom from composition: ``sum_i x_i v_i`` over per-element increments ``v_i`` (Å³).

    Elements without a fitted increment fall back to :attr:`fallback` (elemental volume per atom),
    and to the mean increment when neither is known.
    """

    increments: Mapping[str, float]
    fallback: Mapping[str, float]

    def element_volume(self, element: str) -> float:
        if element in self.increments:
            return float(self.increments[element])
        if element in self.fallback:
            return float(self.fallback[element])
        return float(np.mean(list(self.increments.values())))

    def per_atom(self, composition: Mapping[str, float]) -> float:
        """Predicted volume per atom (Å³) of a composition ``{element: amount}``."""
        total = float(sum(composition.values()))
        if total <= 0:
            raise ValueError("empty composition")
        return sum(float(n) * self.element_volume(str(e)) for e, n in composition.items()) / total


@lru_cache(maxsize=1)
def volume_model() -> VolumeModel:
    """The shipped volume model (increments fitted on MP-20 train, available subset)."""
    cal = calibration()["volume"]
    return VolumeModel(increments=dict(cal["increments"]), fallback=dict(cal["elemental"]))


def elemental_volume_per_atom(element: str) -> float | None:
    """Volume per atom (Å³) of the element's standard state from its molar volume (pymatgen data),
    ``None`` where pymatgen has none."""
    from pymatgen.core import Element

    mv = Element(element).molar_volume  # cm^3/mol
    if mv is None:
        return None
    return float(mv) * 1e24 / 6.02214076e23


def composition_of(structure) -> dict[str, float]:
    return {el.symbol: float(n) for el, n in structure.composition.element_composition.items()}


def volume_ratio(structure, model: VolumeModel | None = None) -> float:
    """Volume per atom of ``structure`` over its composition-based prediction."""
    model = model or volume_model()
    return float(structure.volume / len(structure)) / model.per_atom(composition_of(structure))


def volume_bounds(counts: Mapping[str, float], window: tuple[float, float] | None = None,
                  model: VolumeModel | None = None) -> tuple[float, float]:
    """Admissible cell volume (Å³) for a cell holding ``counts`` atoms (element -> number)."""
    lo, hi = window or volume_window_default()
    n = float(sum(counts.values()))
    v = (model or volume_model()).per_atom(counts) * n
    return lo * v, hi * v


def rescale_to_predicted(structure, model: VolumeModel | None = None):
    """A copy of ``structure`` scaled isotropically to its predicted volume (fractional
    coordinates kept): a starting geometry for relaxation."""
    s = structure.copy()
    target = (model or volume_model()).per_atom(composition_of(s)) * len(s)
    s.scale_lattice(target)
    return s


def geometry_table(structures, model: VolumeModel | None = None) -> dict:
    """Short-contact share and volume-per-atom quartiles of a list of Structures (``None`` skipped).

    Returns counts with their denominator (the structures measured): ``short_contacts`` (pairs
    below 0.7 x covalent sum), the quartiles of the min contact ratio, of volume per atom (Å³) and
    of the volume ratio to the composition-based prediction.
    """
    model = model or volume_model()
    ratios, vpa, vrat = [], [], []
    for s in structures:
        if s is None or len(s) == 0:
            continue
        ratios.append(min_contact_ratio(s))
        vpa.append(s.volume / len(s))
        vrat.append(volume_ratio(s, model))
    n = len(ratios)

    def q(x):
        return [round(float(v), 4) for v in np.quantile(x, [0.25, 0.5, 0.75])] if len(x) else None

    short = int(sum(r < SHORT_CONTACT_RATIO for r in ratios))
    return {
        "n": n,
        "short_contacts": {"count": short, "of": n, "rate": round(short / n, 4) if n else None,
                           "threshold": f"d < {SHORT_CONTACT_RATIO} x (r_cov,i + r_cov,j)"},
        "min_contact_ratio_quartiles": q(np.minimum(ratios, 10.0)) if n else None,
        "volume_per_atom_quartiles": q(vpa),
        "volume_ratio_to_predicted_quartiles": q(vrat),
    }
