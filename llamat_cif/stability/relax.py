"""Structure relaxation: ASE FIRE on positions and cell (FrechetCellFilter), one row per structure.

A relaxation never raises: a structure that does not parse, produces NaN energies, explodes
(volume runs away, energies far below anything physical) or runs out of time comes back as a row
with ``error`` set, and the batch goes on.

Many structures are relaxed by a process pool over CPU cores (one potential per worker, one torch
thread each, so workers do not oversubscribe the cores); on a GPU or with one worker they run in
the calling process.
"""

from __future__ import annotations

import functools
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from llamat_cif.protocol import CDVAE_MIN_DISTANCE
from llamat_cif.stability.potentials import Potential, auto_device, load_potential


@dataclass(frozen=True)
class RelaxConfig:
    """Relaxer settings; recorded beside every result.

    Attributes:
        fmax: force (and scaled stress) convergence threshold, eV/Å. 0.1 keeps energies of
            near-equilibrium cells within a few meV/atom of a tighter relaxation at half the steps.
        max_steps: FIRE steps before giving up (row kept, ``converged=False``). The step budget
            is what bounds a relaxation, so a verdict does not depend on how busy the machine is.
        time_limit_s: safety net in *CPU* seconds of the relaxing process (not wall time: a
            loaded machine must not turn a structure into an error row); exceeded -> error row.
            Wall and CPU time are recorded apart (``wall_s``, ``cpu_s``).
        relax_cell: also relax the cell (FrechetCellFilter); False relaxes positions only.
        min_distance: atoms closer than this (Å) are refused before relaxation: overlapping
            atoms make graph potentials slow and their relaxations meaningless (CDVAE's 0.5 Å).
        max_volume_ratio: volume *growing* by more than this factor counts as exploding. A cell
            may shrink by any factor (over-expanded generated cells legitimately collapse x0.2)
            as long as it keeps ``min_volume_per_atom``.
        min_volume_per_atom: a cell denser than this (Å^3/atom) counts as collapsed; the densest
            solids in the Materials Project hold about 5 Å^3/atom.
        min_energy_per_atom: energies below this (eV/atom) count as exploding; no real solid is
            below about -15 eV/atom on the MP scale.
        primitive: relax and score the primitive cell (spglib, ``PRIMITIVE_SYMPREC``) when it has
            fewer sites than the cell as given: generated CIFs are conventional cells (a third of
            the shipped model's valid samples hold more than 20 sites, MP-20 none), and a
            relaxation costs about the cube of the site count. ``n_sites_input`` records the sites
            as given, ``n_sites`` those relaxed.
        rescale_volume: scale each structure isotropically to its composition-predicted volume
            (:func:`llamat_cif.physics.rescale_to_predicted`) before relaxing. Off by default:
            the relaxation then starts from the structure as given.
    """

    fmax: float = 0.1
    max_steps: int = 500
    time_limit_s: float = 300.0
    relax_cell: bool = True
    min_distance: float = CDVAE_MIN_DISTANCE
    max_volume_ratio: float = 5.0
    min_volume_per_atom: float = 2.0
    min_energy_per_atom: float = -50.0
    rescale_volume: bool = False
    primitive: bool = True

    def protocol(self) -> dict:
        """The settings as recorded beside results (optimizer, cell filter, every field)."""
        out = {"optimizer": "FIRE", "cell_filter": "FrechetCellFilter" if self.relax_cell else None, **asdict(self)}
        if self.primitive:
            out["cell"] = (f"primitive cell (spglib find_primitive, symprec {PRIMITIVE_SYMPREC} Å, the validators' "
                           "tolerance) when it has fewer sites; else as given")
        if self.rescale_volume:
            out["rescale"] = ("isotropic, to the composition-predicted volume "
                              "(llamat_cif.physics.rescale_to_predicted, resources/physics_calibration.json)")
        return out


#: scipy.linalg.logm's accuracy warning (scipy 1.17: ``RuntimeWarning("logm result may be
#: inaccurate, approximate err = ...")``). ASE's FrechetCellFilter takes ``logm(n_atoms * F)`` of
#: the deformation gradient ``F`` at every step; from ~35 atoms up the 1-norm error estimate of
#: that scaled matrix passes scipy's fixed 1000 * eps tolerance even for ``F`` = identity plus
#: noise, so a relaxation warns at nearly every step. The relative error stays ~1e-12, far below
#: anything the optimizer sees.
LOGM_WARNING = "logm result may be inaccurate"


def quiet_warnings() -> None:
    """Silence per-call warnings that would flood a long run's output (none changes a result).

    CHGNet warns on every call about a tensor-to-scalar conversion inside its own code,
    pymatgen reports each rounded fractional coordinate of every CIF it parses, and scipy's
    ``logm`` (called by ASE's FrechetCellFilter at every step) warns about a round-off estimate
    (see :data:`LOGM_WARNING`).

    Changes the process-wide filters; :func:`relax_structure` applies the same filters inside a
    ``warnings.catch_warnings()`` block, so relaxing in-process never floods either.
    """
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
    warnings.filterwarnings("ignore", message="Issues encountered while parsing CIF")
    warnings.filterwarnings("ignore", category=UserWarning, module="pymatgen.io.cif")
    # matched by message: scipy's batching wrapper reports it from scipy/_lib/_util.py, not linalg
    warnings.filterwarnings("ignore", message=LOGM_WARNING, category=RuntimeWarning)


#: symmetry tolerance (Å) of the primitive-cell reduction: the validators' spglib tolerance
PRIMITIVE_SYMPREC = 0.1


def primitive_cell(structure, symprec: float = PRIMITIVE_SYMPREC):
    """The primitive cell of ``structure`` (spglib, ``symprec``) when it has fewer sites, else
    ``structure`` itself (also when spglib finds none or changes the composition)."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        prim = SpacegroupAnalyzer(structure, symprec=symprec).find_primitive()
    except Exception:  # noqa: BLE001 - no symmetry found: relax as given
        return structure
    if prim is None or len(prim) >= len(structure) or \
            prim.composition.reduced_formula != structure.composition.reduced_formula:
        return structure
    return prim


class RelaxationError(RuntimeError):
    """Guard tripped: NaN, exploding energy/volume, or time limit."""


def _to_structure(obj: Any):
    from pymatgen.core import Structure

    if isinstance(obj, Structure):
        return obj
    if isinstance(obj, str):
        from llamat_cif.cif import read_cif

        return read_cif(obj)
    raise TypeError(f"expected a pymatgen Structure or CIF text, got {type(obj).__name__}")


def _empty_row(sid: str) -> dict:
    return {
        "id": sid, "formula": None, "n_sites": None, "n_sites_input": None, "relaxed_cif": None, "energy_initial_per_atom": np.nan,
        "energy_per_atom": np.nan, "converged": False, "n_steps": 0, "wall_s": 0.0, "cpu_s": 0.0,
        "volume_change": np.nan, "volume_rescale": np.nan, "error": None,
    }


def error_row(sid: str, error: str) -> dict:
    """The result row of a structure that was not relaxed (its ``error`` says why)."""
    row = _empty_row(sid)
    row["error"] = error
    return row


def relax_structure(structure: Any, potential: Potential, config: RelaxConfig = RelaxConfig(),
                    sid: str = "", on_step: Callable[[int, Any], None] | None = None) -> dict:
    """Relax one structure and return its result row (never raises).

    The flood filters of :func:`quiet_warnings` hold for the duration of the call (in a
    ``warnings.catch_warnings()`` block), whether it runs in a pool worker or in-process.

    Args:
        structure: pymatgen ``Structure`` or CIF text.
        potential: a loaded :class:`~llamat_cif.stability.potentials.Potential`.
        config: relaxer settings.
        sid: id copied into the row.
        on_step: called as ``on_step(step, atoms)`` after every FIRE step (and with step 0 before
            the first), e.g. to record how the energy evolves (``benchmarks/align/reward_rank.py``).

    Returns:
        dict with ``id, formula, n_sites`` (relaxed), ``n_sites_input`` (as given), ``relaxed_cif,
        energy_initial_per_atom, energy_per_atom``
        (eV/atom, the potential's own scale), ``converged, n_steps, wall_s``, ``volume_change``
        (relaxed over as-given volume, minus 1), ``volume_rescale`` (starting over as-given
        volume when ``config.rescale_volume``, else NaN) and ``error``.
    """
    with warnings.catch_warnings():
        quiet_warnings()
        return _relax_structure(structure, potential, config, sid, on_step)


def _relax_structure(structure: Any, potential: Potential, config: RelaxConfig, sid: str,
                     on_step: Callable[[int, Any], None] | None = None) -> dict:
    from ase.optimize import FIRE
    from pymatgen.io.ase import AseAtomsAdaptor

    row = _empty_row(sid)
    t0 = time.perf_counter()
    c0 = time.process_time()
    steps = 0
    try:
        s = _to_structure(structure)
        row["formula"] = s.composition.reduced_formula
        row["n_sites_input"] = row["n_sites"] = len(s)
        v_given = s.volume / max(len(s), 1)  # per atom: the relaxed cell may be the primitive one
        if config.primitive and len(s):
            s = primitive_cell(s)
            row["n_sites"] = len(s)
        if config.rescale_volume and len(s):
            from llamat_cif.physics import rescale_to_predicted

            s = rescale_to_predicted(s)
            row["volume_rescale"] = float(s.volume / len(s) / v_given)
        # checked on the cell that is relaxed: shrinking to the predicted volume can close a gap
        if config.min_distance > 0 and len(s) and any(len(nb) for nb in s.get_all_neighbors(config.min_distance)):
            raise RelaxationError(f"atoms closer than {config.min_distance} Å; not relaxed")
        atoms = AseAtomsAdaptor.get_atoms(s)
        atoms.calc = potential.calculator()
        n = len(atoms)
        v0 = atoms.get_volume()

        def check() -> float:
            e = float(atoms.get_potential_energy()) / n
            if not math.isfinite(e):
                raise RelaxationError(f"non-finite energy ({e})")
            if e < config.min_energy_per_atom:
                raise RelaxationError(f"exploding energy {e:.3g} eV/atom < {config.min_energy_per_atom}")
            f = atoms.get_forces()
            if not np.all(np.isfinite(f)):
                raise RelaxationError("non-finite forces")
            vol = atoms.get_volume()
            if vol / v0 > config.max_volume_ratio:
                raise RelaxationError(f"exploding cell: volume grew x{vol / v0:.3g}")
            if vol / n < config.min_volume_per_atom:
                raise RelaxationError(f"collapsed cell: {vol / n:.3g} Å^3/atom < {config.min_volume_per_atom:g} "
                                      f"(volume x{vol / v0:.3g})")
            if time.process_time() - c0 > config.time_limit_s:
                raise RelaxationError(f"time limit {config.time_limit_s:g} CPU s exceeded")
            return e

        row["energy_initial_per_atom"] = check()
        target = _cell_filter(atoms) if config.relax_cell else atoms
        opt = FIRE(target, logfile=None)
        converged = False
        for conv in opt.irun(fmax=config.fmax, steps=config.max_steps):
            converged = conv
            steps = int(opt.nsteps)
            check()
            if on_step is not None:
                on_step(int(opt.nsteps), atoms)
        e = check()
        relaxed = AseAtomsAdaptor.get_structure(atoms)
        row.update(
            relaxed_cif=relaxed.to(fmt="cif"), energy_per_atom=e, converged=bool(converged),
            n_steps=int(opt.nsteps), volume_change=float(atoms.get_volume() / n / v_given - 1.0),
        )
    except Exception as exc:  # noqa: BLE001 - one bad structure must not stop the batch
        row["error"] = f"{type(exc).__name__}: {exc}"
        row["n_steps"] = steps  # the steps taken before the guard tripped
    row["wall_s"] = time.perf_counter() - t0
    row["cpu_s"] = time.process_time() - c0
    return row


@functools.cache
def _kept_forces_filter() -> type:
    from ase.filters import FrechetCellFilter

    class KeptForcesFrechetCellFilter(FrechetCellFilter):
        """ASE's FrechetCellFilter that keeps its last generalized forces while the atoms, cell and
        calculator do not change. In ASE 3.29 a FIRE step asks for them about three times (465
        requests for 159 energy calls in a 12-structure profile), and each time the filter redoes a
        3x3 ``logm`` and nine ``expm_frechet``; kept, the same arrays come back (a few % of a
        relaxation)."""

        _kept: tuple | None = None

        def get_forces(self, **kwargs):
            key = (self.atoms.positions.tobytes(), self.atoms.cell.array.tobytes(), id(self.atoms.calc),
                   sorted(kwargs.items()))
            if self._kept is None or self._kept[0] != key:
                forces = super().get_forces(**kwargs)
                self._kept = (key, forces.copy(), self.stress.copy())
            self.stress = self._kept[2].copy()
            return self._kept[1].copy()

    return KeptForcesFrechetCellFilter


def _cell_filter(atoms):
    """FrechetCellFilter on ``atoms`` (positions and cell), its forces kept between identical calls."""
    return _kept_forces_filter()(atoms)


# ------------------------------------------------------------------------------- process pool

def relax_threads(threads: int | None, device: str) -> int | None:
    """torch threads of an in-process relaxation: ``threads`` when given, else 1 on the CPU (graphs
    of tens of atoms are too small to share: 20 relaxations took 5.2 s with one thread and 12.7-20.8 s
    with two on a 2-core machine), else None (torch's setting)."""
    if threads is not None:
        return max(1, int(threads))
    return 1 if device == "cpu" else None


#: the most worker processes ``n_workers=0`` (auto) starts: each holds its own potential (a CHGNet
#: worker peaks at ~0.5 GB resident after a relaxation)
AUTO_WORKERS_MAX = 8


def auto_workers(n_items: int, device: str | None = None) -> int:
    """Worker processes for ``n_items`` structures when the caller asks for "auto" (``0``): one per
    CPU core this process may use, at most one per 8 structures (starting a worker and loading its
    potential costs ~2.4 s, about eight relaxations here) and at most :data:`AUTO_WORKERS_MAX`; 1 on
    a GPU. Rows do not depend on it: every CPU relaxation runs one torch thread, pooled or not."""
    if auto_device(device) != "cpu":
        return 1
    return max(1, min(usable_cores(), AUTO_WORKERS_MAX, -(-int(n_items) // 8)))


def usable_cores() -> int:
    """CPU cores this process may use (its affinity where the platform tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


_WORKER: dict = {}


def _init_worker(potential_spec: str, device: str | None, energy_scale: str | None) -> None:
    # Several workers on few cores: one intra-op thread each, or they fight over the cores.
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    quiet_warnings()
    _WORKER["potential"] = load_potential(potential_spec, device=device, energy_scale=energy_scale)


def _work(args: tuple) -> dict:
    sid, structure, config = args  # a Structure or CIF text
    return relax_structure(structure, _WORKER["potential"], config, sid=sid)


def relax_many(
    items: Iterable[tuple[str, Any]],
    potential: Potential | str = "chgnet",
    config: RelaxConfig = RelaxConfig(),
    *,
    n_workers: int = 1,
    device: str | None = None,
    on_row: Callable[[dict], None] | None = None,
    threads: int | None = None,
    executor: Any = None,
) -> Iterator[dict]:
    """Relax many structures, yielding result rows as they finish (not in input order).

    Args:
        items: ``(id, Structure or CIF text)`` pairs.
        potential: a loaded potential (used in-process) or a name/path (loaded per worker).
        config: relaxer settings.
        n_workers: worker processes; 1 runs in this process. With several, each worker loads
            its own copy of the potential and uses one torch thread.
        device: device for potentials loaded here.
        on_row: called with each row as it finishes.
        threads: torch intra-op threads of an in-process relaxation (``n_workers`` 1); None: 1 for a
            potential on the CPU, torch's setting otherwise (:func:`relax_threads`). Set while rows
            are produced, restored when the generator ends or is closed. Pool workers always use one
            thread each.
        executor: a :class:`llamat_cif.executors.RayExecutor`: relax on Ray workers (one torch
            thread each, the potential loaded once per worker) instead of here.
    """
    if executor is not None:
        for row in executor.relax(items, potential, config, device=device):
            if on_row:
                on_row(row)
            yield row
        return
    if n_workers <= 1:
        import torch

        pot = potential if isinstance(potential, Potential) else load_potential(potential, device=device)
        before = torch.get_num_threads()
        if (n := relax_threads(threads, pot.device)) is not None:
            torch.set_num_threads(n)
        try:
            for sid, s in items:
                row = relax_structure(s, pot, config, sid=sid)
                if on_row:
                    on_row(row)
                yield row
        finally:  # the caller's setting again once the rows are done (or the generator is closed)
            torch.set_num_threads(before)
        return

    import multiprocessing as mp

    spec = potential.name if isinstance(potential, Potential) else str(potential)
    scale = potential.energy_scale if isinstance(potential, Potential) else None
    # spawn, not fork: torch's thread pools do not survive fork reliably.
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(n_workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(spec, device or "cpu", scale)) as ex:
        it = iter(items)
        pending = set()
        # keep a bounded number of tasks in flight so a huge input is not pickled all at once
        # a Structure travels as itself (pickled), not as CIF text: CIF rounds the coordinates, and a
        # row must not depend on --workers
        for sid, s in it:
            pending.add(ex.submit(_work, (sid, s, config)))
            if len(pending) >= 4 * n_workers:
                break
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                row = fut.result()
                if on_row:
                    on_row(row)
                yield row
                nxt = next(it, None)
                if nxt is not None:
                    sid, s = nxt
                    pending.add(ex.submit(_work, (sid, s, config)))
