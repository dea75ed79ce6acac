"""Test setup: offline, and real data from ../shared through the project's own data setting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_SHARED = Path(__file__).resolve().parents[1].parent / "shared"
if "LLAMAT_CIF_DATA" not in os.environ and (_SHARED / "data").is_dir():
    os.environ["LLAMAT_CIF_DATA"] = str(_SHARED / "data")
if "LLAMAT_CIF_MODELS" not in os.environ and (_SHARED / "models").is_dir():
    os.environ["LLAMAT_CIF_MODELS"] = str(_SHARED / "models")


def _has_data() -> bool:
    d = os.environ.get("LLAMAT_CIF_DATA")
    return bool(d) and Path(d, "mp_20_pilot").is_dir()


requires_data = pytest.mark.skipif(not _has_data(), reason="needs the shared data ($LLAMAT_CIF_DATA)")


@pytest.fixture(scope="session")
def nacl():
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture(scope="session")
def perovskite():
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


@pytest.fixture(scope="session")
def diamond():
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(3.567), ["C"], [[0, 0, 0]])
