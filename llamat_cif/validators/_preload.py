"""Imported once by the pool's fork server, so that each worker starts warm (pymatgen takes ~3 s)."""

import pymatgen.analysis.local_env  # noqa: F401
import pymatgen.io.cif  # noqa: F401
import pymatgen.symmetry.analyzer  # noqa: F401
import smact  # noqa: F401

import llamat_cif.cif  # noqa: F401
import llamat_cif.validators.core  # noqa: F401
