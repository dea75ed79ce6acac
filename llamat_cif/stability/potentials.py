"""ML interatomic potentials behind one loader: CHGNet (default, offline), SevenNet and matgl (optional).

Every potential declares the *energy scale* of its predictions, because that decides whether its
energies can be put on the Materials Project hull and whether the MP2020 corrections apply:

* ``"mp2020"``: trained on MPtrj, whose energies already include the MP2020 anion / GGA+U
  corrections (CHGNet). Formation energies against the MP elemental references land on MP's scale
  as they are; correcting them again shifts oxides by about -0.4 eV/atom.
* ``"mp-uncorrected"``: trained on raw MP GGA/GGA+U energies (matgl ``M3GNet-MP-2021.2.8-PES``).
  Needs the MP2020 scheme before it meets the MP hull.
* ``"pbe"`` / ``"r2scan"``: MatPES-style plain functional energies; never mix with MP references.

SevenNet (optional extra ``llamat-cif[sevenn]``): the checkpoints inside the ``sevenn`` wheel,
``sevennet-0`` (SevenNet-0, 11 Jul 2024), ``sevennet-mf-0`` (its PBE modal) and ``sevennet-l3i5``,
all trained on MPtrj. Unlike CHGNet they predict *uncorrected* energies (``"mp-uncorrected"``): measured,
not assumed, by ``benchmarks/stability/sevennet_scale.py`` (single points on 200 DFT-relaxed MP-20
test structures: on the 86 whose MP2020 correction is non-zero, E_hull taken as is misses MP's own by a
median 0.31 eV/atom, after MP2020 by 0.005-0.013; CHGNet the other way round, 0.016 vs 0.30).

matgl checkpoints are tied to the matgl version that wrote them: a 2.0.x checkpoint loads under
matgl 4.x without an error but gives wrong energies. :func:`load_potential` therefore reads the
version a checkpoint was saved with and refuses a mismatch before importing matgl at all.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamat_cif.paths import models_dir
from llamat_cif.protocol import package_versions

DEFAULT_POTENTIAL = "chgnet"

#: energy scales a potential can declare (see module docstring)
ENERGY_SCALES = ("mp2020", "mp-uncorrected", "pbe", "r2scan", "unknown")

# Versions the shipped matgl checkpoints were written with. Their model.json carries no version
# (metadata is null), so this table is the record; it comes from matgl's pretrained_models folder
# at commit e9cde229 (matgl 2.0.x era) as documented in the shared data README.
KNOWN_MATGL_CHECKPOINTS: dict[str, dict[str, str]] = {
    "M3GNet-MP-2021.2.8-PES": {"matgl_version": "2.0", "energy_scale": "mp-uncorrected", "backend": "dgl"},
    "TensorNet-MatPES-PBE-v2025.1-PES": {"matgl_version": "2.0", "energy_scale": "pbe", "backend": "pyg"},
}


#: SevenNet checkpoints shipped inside the ``sevenn`` wheel: our name -> (sevenn's name, calculator
#: keyword arguments, energy scale). The scale was measured (see module docstring).
SEVENNET_MODELS: dict[str, tuple[str, dict, str]] = {
    "sevennet-0": ("7net-0", {}, "mp-uncorrected"),
    "sevennet-mf-0": ("7net-mf-0", {"modal": "PBE"}, "mp-uncorrected"),
    "sevennet-l3i5": ("7net-l3i5", {}, "mp-uncorrected"),
}


class PotentialError(RuntimeError):
    """A potential cannot be found, loaded, or is incompatible with the installed packages."""


@dataclass
class Potential:
    """A loaded ML potential and what is known about its energies.

    Attributes:
        name: model name or path as given.
        backend: ``"chgnet"``, ``"sevennet"`` or ``"matgl"``.
        model: the backend's model object.
        device: ``"cpu"`` or ``"cuda"``.
        energy_scale: one of :data:`ENERGY_SCALES`.
        package_version: version of the backend package in use.
        saved_with: backend version the checkpoint was written with (matgl), if known.
    """

    name: str
    backend: str
    model: Any
    device: str
    energy_scale: str
    package_version: str
    saved_with: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def needs_mp2020_correction(self) -> bool:
        """True when energies must go through MP2020 before meeting the MP reference hull."""
        return self.energy_scale == "mp-uncorrected"

    @property
    def mp_hull_compatible(self) -> bool:
        """True when the energies can be compared with Materials Project formation energies."""
        return self.energy_scale in ("mp2020", "mp-uncorrected")

    def calculator(self):
        """An ASE calculator for this potential (built once, then reused)."""
        if "calculator" not in self.extra:
            self.extra["calculator"] = self._new_calculator()
        return self.extra["calculator"]

    def _new_calculator(self):
        if self.backend == "chgnet":
            from chgnet.model.dynamics import CHGNetCalculator

            # one backward pass for forces and stress, subnormals flushed: chgnet's numbers, ~3x faster
            from llamat_cif.stability.chgnet_calc import FastCHGNetCalculator, fast_path_supported

            cls = FastCHGNetCalculator if fast_path_supported() else CHGNetCalculator
            if cls is CHGNetCalculator:
                warnings.warn(f"chgnet {self.package_version}: internals differ from 0.3-0.4; relaxing with "
                              "chgnet's own, ~3x slower calculator", stacklevel=2)
            with _quiet_stdout():  # "CHGNet will run on cpu", once per calculator and worker
                return cls(model=self.model, use_device=self.device, on_isolated_atoms="ignore")
        if self.backend == "sevennet":
            return self.model  # the SevenNet ASE calculator itself
        if self.backend == "matgl":
            from matgl.ext.ase import PESCalculator  # type: ignore[import-not-found]

            return PESCalculator(self.model)
        raise PotentialError(f"unknown backend {self.backend!r}")

    def predict_energies(self, structures: list, batch_size: int = 16) -> list[float]:
        """Total energies (eV) of many structures, batched where the backend supports it."""
        if self.backend == "chgnet":
            preds = self.model.predict_structure(list(structures), task="e", batch_size=batch_size)
            if isinstance(preds, dict):
                preds = [preds]
            return [float(p["e"]) * len(s) for p, s in zip(preds, structures, strict=True)]
        calc = self.calculator()
        out = []
        from pymatgen.io.ase import AseAtomsAdaptor

        for s in structures:
            atoms = AseAtomsAdaptor.get_atoms(s)
            atoms.calc = calc
            out.append(float(atoms.get_potential_energy()))
        return out

    def protocol(self) -> dict:
        """What to record beside any result computed with this potential."""
        return {
            "potential": self.name,
            "backend": self.backend,
            "backend_version": self.package_version,
            "checkpoint_saved_with": self.saved_with,
            "device": self.device,
            "energy_scale": self.energy_scale,
            "mp2020_correction_applied": self.needs_mp2020_correction,
            **({"checkpoint": Path(self.extra["checkpoint"]).name} if "checkpoint" in self.extra else {}),
            **({"modal": self.extra["modal"]} if "modal" in self.extra else {}),
        }


def _quiet_stdout():
    """Swallow what a backend prints on stdout while loading (stdout belongs to ``--json``)."""
    import contextlib
    import io

    return contextlib.redirect_stdout(io.StringIO())


def auto_device(device: str | None = None) -> str:
    """``device`` if given, else ``"cuda"`` when a CUDA device is visible, else ``"cpu"``."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _pkg_version(pkg: str) -> str | None:
    return package_versions((pkg,))[pkg]


def load_potential(
    name_or_path: str | Path = DEFAULT_POTENTIAL,
    device: str | None = None,
    *,
    energy_scale: str | None = None,
    allow_version_mismatch: bool = False,
) -> Potential:
    """Load an ML potential by name or local path.

    Accepted forms:
        * ``"chgnet"`` (default) or ``"chgnet-0.3.0"`` / ``"chgnet-0.2.0"``: weights from the chgnet wheel.
        * a CHGNet checkpoint file (``*.pth.tar``).
        * ``"sevennet-0"``, ``"sevennet-mf-0"``, ``"sevennet-l3i5"``: weights from the sevenn wheel
          (extra ``llamat-cif[sevenn]``), or ``"sevennet:<checkpoint.pth>"`` (pass ``energy_scale``).
        * ``"matgl:<NAME>"`` or a matgl model name: the folder ``$LLAMAT_CIF_MODELS/matgl/<NAME>``.
        * a folder holding ``model.json`` + ``model.pt`` + ``state.pt`` (matgl).

    The network is never used: a matgl name that is not a local folder is an error.

    Args:
        name_or_path: model name or path.
        device: ``"cpu"``/``"cuda"``; chosen automatically when None.
        energy_scale: override the scale the loader infers (one of :data:`ENERGY_SCALES`).
        allow_version_mismatch: load a matgl checkpoint even if it was written by another
            matgl version (energies may be silently wrong).

    Raises:
        PotentialError: unknown name, missing files, missing package, or a matgl version mismatch.
    """
    backend, target = resolve_potential(name_or_path)
    dev = auto_device(device)
    if backend == "chgnet":
        return _load_chgnet(str(target), dev, energy_scale)
    if backend == "sevennet":
        return _load_sevennet(str(target), dev, energy_scale)
    return _load_matgl_folder(Path(target), dev, energy_scale, allow_version_mismatch)


def resolve_potential(name_or_path: str | Path) -> tuple[str, str | Path]:
    """Which backend and weights a potential name means, without loading anything (so a run can
    refuse a bad ``--potential`` before it starts): ``("chgnet", spec)``, ``("sevennet", name or
    checkpoint)`` or ``("matgl", folder)``.

    Raises:
        PotentialError: neither a CHGNet or SevenNet name or checkpoint nor a local matgl folder.
    """
    spec = str(name_or_path)
    low = spec.lower()
    if low in SEVENNET_MODELS:
        return "sevennet", low
    if low.startswith("sevennet:"):
        return "sevennet", spec.split(":", 1)[1]
    if low == "chgnet" or low.startswith("chgnet-") or low.endswith((".pth.tar", ".pth")):
        return "chgnet", spec
    path = Path(spec).expanduser()
    if not path.is_dir():
        name = spec.split(":", 1)[1] if low.startswith("matgl:") else spec
        cand = models_dir() / "matgl" / name
        if cand.is_dir():
            path = cand
        else:
            raise PotentialError(
                f"unknown potential {spec!r}: not 'chgnet' or one of {', '.join(SEVENNET_MODELS)}, not a "
                f"CHGNet checkpoint file, and no matgl "
                f"folder {cand} (set $LLAMAT_CIF_MODELS or pass a folder with model.json). "
                "Models are never downloaded at run time."
            )
    return "matgl", path


def _load_chgnet(spec: str, device: str, energy_scale: str | None) -> Potential:
    try:
        from chgnet.model import CHGNet
    except ImportError as exc:  # pragma: no cover - chgnet is a core dependency
        raise PotentialError("chgnet is not installed: pip install chgnet") from exc
    with _quiet_stdout():  # CHGNet prints "CHGNet v0.3.0 initialized with ..." on stdout
        if spec.lower() == "chgnet":
            model = CHGNet.load(use_device=device, verbose=False)
        elif spec.lower().startswith("chgnet-"):
            model = CHGNet.load(model_name=spec.split("-", 1)[1], use_device=device, verbose=False)
        else:
            if not Path(spec).is_file():
                raise PotentialError(f"CHGNet checkpoint {spec} does not exist")
            model = CHGNet.from_file(spec)
    model.eval()
    return Potential(
        name=spec, backend="chgnet", model=model, device=device,
        energy_scale=energy_scale or "mp2020", package_version=_pkg_version("chgnet") or "?",
    )


def _load_sevennet(spec: str, device: str, energy_scale: str | None) -> Potential:
    version = _pkg_version("sevenn")
    if version is None:
        raise PotentialError(f"potential {spec} needs the optional extra: pip install 'llamat-cif[sevenn]'")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e3nn's "`torch.jit.script` is deprecated" at import
        from sevenn.calculator import SevenNetCalculator
        from sevenn.util import pretrained_name_to_path

    if spec in SEVENNET_MODELS:
        name, kwargs, scale = SEVENNET_MODELS[spec]
        try:
            path = Path(pretrained_name_to_path(name))
        except Exception as exc:  # noqa: BLE001 - sevenn's own lookup error, with context
            raise PotentialError(f"sevenn {version} does not know {name!r} ({exc})") from exc
        if not path.is_file():
            raise PotentialError(f"{spec}: checkpoint {path} is not inside the installed sevenn {version} wheel; "
                                 "models are never downloaded at run time")
    else:
        path, kwargs, scale = Path(spec).expanduser(), {}, "unknown"
        if not path.is_file():
            raise PotentialError(f"SevenNet checkpoint {path} does not exist")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no tensor-product accelerator" on every CPU load
        calc = SevenNetCalculator(str(path), device=device, **kwargs)
    return Potential(
        name=spec, backend="sevennet", model=calc, device=device,
        energy_scale=energy_scale or scale, package_version=version, extra={"checkpoint": str(path), **kwargs},
    )


def checkpoint_saved_with(folder: str | Path) -> str | None:
    """The matgl version (``major.minor``) a checkpoint folder was written with, if recorded.

    Looks, in order, at ``model.json`` metadata (``matgl_version``), a ``matgl x.y`` mention in the
    folder's README, and :data:`KNOWN_MATGL_CHECKPOINTS` by folder name.
    """
    folder = Path(folder)
    mj = folder / "model.json"
    if mj.exists():
        meta = (json.loads(mj.read_text()) or {}).get("metadata") or {}
        if isinstance(meta, dict):
            for key in ("matgl_version", "version"):
                if meta.get(key):
                    return _major_minor(str(meta[key]))
    readme = folder / "README.md"
    if readme.exists():
        m = re.search(r"matgl\s*(?:==|version\s*)?\s*v?(\d+\.\d+)", readme.read_text(), re.IGNORECASE)
        if m:
            return m.group(1)
    known = KNOWN_MATGL_CHECKPOINTS.get(folder.name)
    return known["matgl_version"] if known else None


def _major_minor(v: str) -> str:
    parts = re.findall(r"\d+", v)
    return ".".join(parts[:2]) if len(parts) >= 2 else v


def infer_energy_scale(folder_name: str) -> str:
    """Energy scale from a matgl model name (``...MatPES-PBE...`` -> ``pbe`` etc.)."""
    known = KNOWN_MATGL_CHECKPOINTS.get(folder_name)
    if known:
        return known["energy_scale"]
    n = folder_name.lower()
    if "matpes-pbe" in n:
        return "pbe"
    if "r2scan" in n:
        return "r2scan"
    if "mptrj" in n:
        return "mp2020"
    if "-mp-" in n or n.startswith("m3gnet-mp"):
        return "mp-uncorrected"
    return "unknown"


def check_matgl_version(folder: str | Path, installed: str | None) -> str | None:
    """Raise :class:`PotentialError` unless the installed matgl matches the checkpoint's version.

    Returns the version the checkpoint was saved with (``None`` if not recorded).
    """
    folder = Path(folder)
    saved = checkpoint_saved_with(folder)
    if installed is None:
        raise PotentialError(
            f"matgl checkpoint {folder.name} needs the optional extra: pip install 'llamat-cif[matgl]' "
            f"(matgl {saved or '?'}.x, the version it was saved with)."
        )
    if saved is None:
        raise PotentialError(
            f"cannot tell which matgl version wrote {folder}; checkpoints load silently under other "
            "versions with wrong energies. Record it in model.json metadata (matgl_version) or pass "
            "allow_version_mismatch=True at your own risk."
        )
    if _major_minor(installed) != saved:
        raise PotentialError(
            f"matgl checkpoint {folder.name} was saved with matgl {saved}.x but matgl {installed} is "
            f"installed. Such checkpoints load without error and give wrong energies (measured: "
            f"M3GNet-MP-2021.2.8-PES under matgl 4.1.2 gives -7.45 eV for matgl's MoS test cell, "
            f"expected -10.82). Install a matching version, e.g. `pip install --no-deps matgl=={saved}.4` "
            "in a separate environment, or pass allow_version_mismatch=True."
        )
    return saved


def _load_matgl_folder(folder: Path, device: str, energy_scale: str | None, allow_mismatch: bool) -> Potential:
    if not (folder / "model.json").exists():
        raise PotentialError(f"{folder} is not a matgl checkpoint folder (no model.json)")
    installed = _pkg_version("matgl")
    saved = checkpoint_saved_with(folder)
    if not allow_mismatch:
        check_matgl_version(folder, installed)
    elif installed is None:
        check_matgl_version(folder, installed)  # still a missing package: same message
    try:
        import matgl  # type: ignore[import-not-found]

        model = matgl.load_model(folder)
    except Exception as exc:  # noqa: BLE001 - report any backend failure with context
        raise PotentialError(f"matgl {installed} could not load {folder}: {type(exc).__name__}: {exc}") from exc
    try:
        model = model.to(device)
    except Exception:  # noqa: BLE001 - some matgl models do not implement .to
        pass
    return Potential(
        name=folder.name, backend="matgl", model=model, device=device,
        energy_scale=energy_scale or infer_energy_scale(folder.name),
        package_version=installed or "?", saved_with=saved,
    )
