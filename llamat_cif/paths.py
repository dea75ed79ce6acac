"""Where data and models live: one setting each, environment variable or explicit override.

The toolkit never hard-codes a location of real data. ``LLAMAT_CIF_DATA`` points at a folder laid
out like ``<data>/<set>/<split>.csv.gz`` (see :mod:`llamat_cif.data`); ``LLAMAT_CIF_MODELS`` at a
folder of model checkpoints (``<models>/matgl/<name>/``, local LLaMA checkpoints, ...). CLI options
``--data-dir`` / ``--models-dir`` override both.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "LLAMAT_CIF_DATA"
MODELS_ENV = "LLAMAT_CIF_MODELS"
_DEFAULT_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llamat-cif"


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """Resolve the data folder: ``override`` > ``$LLAMAT_CIF_DATA`` > ``~/.cache/llamat-cif/data``."""
    if override:
        return Path(override).expanduser().resolve()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return _DEFAULT_ROOT / "data"


def models_dir(override: str | os.PathLike | None = None) -> Path:
    """Resolve the models folder: ``override`` > ``$LLAMAT_CIF_MODELS`` > ``~/.cache/llamat-cif/models``.

    When unset and a data folder is set, a sibling ``models`` folder of it is used if it exists
    (the layout of a downloaded bundle: ``<root>/data`` and ``<root>/models``).
    """
    if override:
        return Path(override).expanduser().resolve()
    env = os.environ.get(MODELS_ENV)
    if env:
        return Path(env).expanduser().resolve()
    data_env = os.environ.get(DATA_ENV)
    if data_env:
        sibling = Path(data_env).expanduser().resolve().parent / "models"
        if sibling.is_dir():
            return sibling
    return _DEFAULT_ROOT / "models"


def shipped_models_dir() -> Path:
    """Folder of the models shipped inside the package (``llamat_cif/models``)."""
    return Path(__file__).resolve().parent / "models"
