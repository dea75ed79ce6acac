"""Stability of crystals: ML-potential relaxation and energy above the hull.

Modules, in pipeline order:

* :mod:`~llamat_cif.stability.potentials`: ``load_potential(name_or_path, device=None)`` (CHGNet default,
  matgl optional) and each potential's declared energy scale.
* :mod:`~llamat_cif.stability.relax`: FIRE + FrechetCellFilter relaxation with guards, process pool.
* :mod:`~llamat_cif.stability.hull`: the MP-20 reference hull (or a user hull) and E_hull.
* :mod:`~llamat_cif.stability.pipeline`: relax + score many structures, streaming and resumable.

S.U.N. (stable, unique, novel) is a metric: :mod:`llamat_cif.metrics.sun`.
"""

from llamat_cif.stability.hull import Hull, HullError, mp2020_corrected_energy
from llamat_cif.stability.pipeline import (
    E_HULL_METASTABLE,
    StabilityConfig,
    StabilityResumeError,
    read_structures_input,
    run_stability,
    summarize,
)
from llamat_cif.stability.potentials import (
    DEFAULT_POTENTIAL,
    Potential,
    PotentialError,
    load_potential,
)
from llamat_cif.stability.relax import RelaxConfig, relax_many, relax_structure

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
