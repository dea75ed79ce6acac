"""Stability of crystals: ML-potential relaxation and energy above the hull.

Modules, in pipeline order:

* :mod:`~llamat_cif.stability.potentials`: ``load_potential(name_or_path, device=None)`` (CHGNet default,
  matgl optional) and each potential's declared energy scale.
* :mod:`~llamat_cif.stability.relax`: FIRE + FrechetCellFilter relaxation with guards, process pool.
* :mod:`~llamat_cif.stability.hull`: the MP-20 reference hull (or a user hull) and E_hull.
* :mod:`~llamat_cif.stability.pipeline`: relax + score many structures, streaming and resumable.
* :mod:`~llamat_cif.stability.agreement`: score the relaxed cell with further potentials, flag disagreement.
* :mod:`~llamat_cif.stability.summary`: counts and rates of a stability table.

S.U.N. (stable, unique, novel) is a metric: :mod:`llamat_cif.metrics.sun`.
"""

from llamat_cif.protocol import E_HULL_METASTABLE
from llamat_cif.stability.hull import Hull, HullError, mp2020_corrected_energy
from llamat_cif.stability.pipeline import (
    StabilityConfig,
    StabilityResumeError,
    read_structures_input,
    run_stability,
)
from llamat_cif.stability.potentials import (
    DEFAULT_POTENTIAL,
    Potential,
    PotentialError,
    load_potential,
)
from llamat_cif.stability.relax import RelaxConfig, relax_many, relax_structure
from llamat_cif.stability.summary import summarize

__all__ = [
    "DEFAULT_POTENTIAL",
    "E_HULL_METASTABLE",
    "Hull",
    "HullError",
    "Potential",
    "PotentialError",
    "RelaxConfig",
    "StabilityConfig",
    "StabilityResumeError",
    "load_potential",
    "mp2020_corrected_energy",
    "read_structures_input",
    "relax_many",
    "relax_structure",
    "run_stability",
    "summarize",
]
