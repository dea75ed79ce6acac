"""The LLaMat-CIF instruction task mix: (prompt, completion) pairs built from crystal structures.

Task families (after LLaMat-CIF, Mishra et al. 2024, and crystal-text-llm, Gruver et al. 2024; the
prompt wording is our own):

* ``generate`` - unconditional generation: write a crystal.
* ``conditional`` - generation given a random subset of: reduced formula, space group, energy above
  the hull, band gap (the last two only when the dataset has them).
* ``infill`` - one element is replaced by ``[MASK]`` everywhere in the crystal text; name it.
* CIF reading - given the crystal text, answer: ``atom_count`` (sites in the written cell),
  ``lattice`` (a, b, c, alpha, beta, gamma), ``site_element`` (element at given fractional
  coordinates, often a symmetry copy not written in a CIF), ``spacegroup``, ``volume``,
  ``formula`` (reduced).

Every answer is computed with pymatgen from the crystal *as written* (the text is parsed back with
:func:`llamat_cif.cif.from_text`), so rounding in the text never makes an answer inconsistent with
the prompt. pymatgen is imported lazily: the training loop itself must run without it.

Prompt layout (also what :func:`generation_prompt` gives the sampler)::

    ### Task
    <instruction>
    ### Crystal            (reading and infill tasks only)
    <crystal text>
    ### Answer
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

GENERATION_TASKS = ("generate", "conditional")
READING_TASKS = ("atom_count", "lattice", "site_element", "spacegroup", "volume", "formula")
TASKS: tuple[str, ...] = (*GENERATION_TASKS, "infill", *READING_TASKS)

#: Probability that a structure contributes an example of each task. Generation dominates, as in
#: LLaMat-CIF, where generation was the goal and reading tasks a secondary signal.
DEFAULT_WEIGHTS: dict[str, float] = {
    "generate": 1.0,
    "conditional": 1.0,
    "infill": 0.5,
    "atom_count": 0.25,
    "lattice": 0.25,
    "site_element": 0.25,
    "spacegroup": 0.25,
    "volume": 0.25,
    "formula": 0.25,
}

MASK = "[MASK]"
SYMPREC = 0.1  # spglib tolerance in Å, the value used by llamat_cif.cif and most MP tooling

_FORMAT_NAME = {"cif": "CIF", "llamat": "LLaMat plain-text"}
# property columns that hold E_hull (eV/atom) and band gap (eV) in the registered datasets
_EHULL_KEYS = ("e_above_hull", "energy_above_hull", "e_hull")
_GAP_KEYS = ("band_gap",)


@dataclass(frozen=True)
class InstructionExample:
    """One training pair; ``completion`` is followed by ``eos`` in training."""

    id: str
    task: str
    prompt: str
    completion: str


@dataclass
class TaskMix:
    """Examples built from a set of structures, with what was skipped and why."""

    examples: list[InstructionExample] = field(default_factory=list)
    n_structures: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (structure id, reason)

    def counts(self) -> dict[str, int]:
        """Examples per task."""
        return dict(Counter(e.task for e in self.examples))


def _prompt(instruction: str, crystal: str | None = None) -> str:
    parts = ["### Task", instruction]
    if crystal is not None:
        parts += ["### Crystal", crystal.rstrip("\n")]
    parts.append("### Answer")
    return "\n".join(parts) + "\n"


def _number(x: float, decimals: int) -> str:
    return f"{x:.{decimals}f}"


def generation_prompt(
    *,
    fmt: str = "cif",
    formula: str | None = None,
    spacegroup: str | int | None = None,
    e_hull: float | None = None,
    band_gap: float | None = None,
) -> str:
    """Prompt asking for a crystal, with any of the given conditions (unconditional when none).

    Args:
        fmt: ``"cif"`` or ``"llamat"``, the representation the answer is written in.
        formula: reduced formula, e.g. ``"NaCl"``.
        spacegroup: space-group number or Hermann-Mauguin symbol.
        e_hull: energy above the convex hull in eV/atom.
        band_gap: band gap in eV.
    """
    if fmt not in _FORMAT_NAME:
        raise ValueError(f"unknown format {fmt!r}; use one of {sorted(_FORMAT_NAME)}")
    conditions = []
    if formula is not None:
        conditions.append(f"its reduced chemical formula is {formula}")
    if spacegroup is not None:
        conditions.append(f"its space group is {spacegroup}")
    if e_hull is not None:
        conditions.append(f"its energy above the convex hull is {_number(e_hull, 3)} eV/atom")
    if band_gap is not None:
        conditions.append(f"its band gap is {_number(band_gap, 2)} eV")
    what = f"Write the {_FORMAT_NAME[fmt]} description of a stable inorganic crystal"
    if conditions:
        what += " such that " + "; ".join(conditions)
    return _prompt(what + ".")


def _first(props: dict[str, Any], keys: Sequence[str]) -> float | None:
    for k in keys:
        v = props.get(k)
        if v is not None:
            try:
                f = float(v)
            except (TypeError, ValueError):
                continue
            if np.isfinite(f):
                return f
    return None


def _spacegroup(structure: Any) -> tuple[str, int]:
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    sga = SpacegroupAnalyzer(structure, symprec=SYMPREC)
    return sga.get_space_group_symbol(), int(sga.get_space_group_number())


def mask_element(text: str, element: str, fmt: str) -> str:
    """Replace every occurrence of ``element`` in a crystal text by ``[MASK]``.

    Only element positions are touched: in CIF the ``data_`` formula, ``_chemical_formula_sum`` and
    the symbol/label columns of the site rows (never the space-group symbol, where ``F`` or ``P``
    are lattice letters); in the LLaMat format the element lines.

    Raises:
        ValueError: when the element does not occur.
    """
    # a symbol is an uppercase letter plus lowercase letters; "N" must not match inside "Na"
    pat = re.compile(rf"{re.escape(element)}(?![a-z])")
    out, hits = [], 0
    in_sites = False
    for line in text.split("\n"):
        new = line
        if fmt == "llamat":
            if line.strip() == element:
                new = MASK
        elif line.startswith("data_") or line.startswith("_chemical_formula_sum"):
            new = pat.sub(MASK, line)
        elif line.startswith("_atom_site"):
            in_sites = True
        elif in_sites and line.strip() and not line.startswith(("_", "loop_", "#")):
            fields = line.split()
            if len(fields) >= 2 and fields[0] == element:
                fields[0] = MASK
                fields[1] = pat.sub(MASK, fields[1], count=1)
                new = " ".join(fields)
        hits += new != line
        out.append(new)
    if not hits:
        raise ValueError(f"{element} does not occur in the text")
    return "\n".join(out)


def make_example(
    task: str,
    structure: Any,
    props: dict[str, Any],
    *,
    sid: str,
    fmt: str = "cif",
    rng: np.random.Generator | None = None,
    text: str | None = None,
    written: Any | None = None,
) -> InstructionExample | None:
    """One example of ``task`` for a structure (``None`` when the task does not apply).

    Args:
        task: one of :data:`TASKS`.
        structure: an ordered pymatgen ``Structure``.
        props: dataset properties (E_hull and band gap are read from them).
        sid: structure id (examples keep it, so train/val can be split by structure).
        fmt: crystal text representation.
        rng: randomness for condition subsets, masked element and queried site.
        text: the structure's text in ``fmt`` when already computed.
        written: ``from_text(text)`` when already computed (parsing is the slow part).

    Raises:
        ValueError: unknown task. Errors of the crystal writer propagate
            (:class:`llamat_cif.cif.CrystalTextError`).
    """
    from llamat_cif.cif import from_text, to_text

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
    rng = rng or np.random.default_rng(0)
    text = text if text is not None else to_text(structure, fmt)
    if task == "generate":
        return InstructionExample(sid, task, generation_prompt(fmt=fmt), text)
    if written is None:
        written = from_text(text, fmt)  # the cell as the text shows it: answers refer to this
    fmt_name = _FORMAT_NAME[fmt]
    if task == "conditional":
        symbol, number = _spacegroup(written)
        options: dict[str, Any] = {"formula": written.composition.reduced_formula,
                                   "spacegroup": symbol if rng.random() < 0.5 else number}
        e_hull, gap = _first(props, _EHULL_KEYS), _first(props, _GAP_KEYS)
        if e_hull is not None:
            options["e_hull"] = e_hull
        if gap is not None:
            options["band_gap"] = gap
        keys = sorted(options)
        k = int(rng.integers(1, len(keys) + 1))
        chosen = [keys[i] for i in sorted(rng.choice(len(keys), size=k, replace=False))]
        return InstructionExample(sid, task, generation_prompt(fmt=fmt, **{c: options[c] for c in chosen}), text)
    if task == "infill":
        elements = sorted({el.symbol for el in written.composition.elements})
        if len(elements) < 2:
            return None  # masking the only element leaves nothing to infer from
        element = elements[int(rng.integers(len(elements)))]
        masked = mask_element(text, element, fmt)
        instruction = (f"One element of this {fmt_name} crystal has been replaced by {MASK}. "
                       f"Which element is it? Answer with its chemical symbol.")
        return InstructionExample(sid, task, _prompt(instruction, masked), element)

    if task == "atom_count":
        q, a = "How many atoms does the unit cell written below contain?", str(len(written))
    elif task == "lattice":
        lat = written.lattice
        q = "Give the lattice parameters a, b, c (Å) and alpha, beta, gamma (degrees) of this crystal."
        a = (f"a = {lat.a:.3f}, b = {lat.b:.3f}, c = {lat.c:.3f}, "
             f"alpha = {lat.alpha:.2f}, beta = {lat.beta:.2f}, gamma = {lat.gamma:.2f}")
    elif task == "site_element":
        i = int(rng.integers(len(written)))
        x, y, z = (float(v) % 1.0 for v in written[i].frac_coords)
        q = (f"Which element occupies the site at fractional coordinates "
             f"({x:.3f}, {y:.3f}, {z:.3f}) of this crystal?")
        a = written[i].specie.symbol
    elif task == "spacegroup":
        symbol, number = _spacegroup(written)
        q, a = "What is the space group of this crystal (symbol and number)?", f"{symbol} ({number})"
    elif task == "volume":
        q, a = "What is the volume of the unit cell written below, in Å^3?", f"{written.volume:.2f}"
    else:  # formula
        q, a = "What is the reduced chemical formula of this crystal?", written.composition.reduced_formula
    return InstructionExample(sid, task, _prompt(q, text), a)


def build_task_mix(
    records: Iterable[tuple[str, Any, dict[str, Any]]],
    *,
    fmt: str = "cif",
    tasks: Sequence[str] | None = None,
    weights: dict[str, float] | None = None,
    seed: int = 0,
    n_jobs: int = 1,
    progress: bool = False,
    total: int | None = None,
) -> TaskMix:
    """Build the task mix from ``(id, Structure | None, properties)`` records.

    Each structure contributes an example of task ``t`` with probability ``weights[t]``
    (:data:`DEFAULT_WEIGHTS`; a weight above 1 gives that many examples on average).
    A structure that cannot be written or read is skipped with its reason, never fatal.
    Structure ``i`` draws from its own generator seeded with ``(seed, i)``, so the mix is the
    same whatever ``n_jobs``.

    Args:
        records: e.g. :func:`llamat_cif.data.iter_structures`.
        fmt: ``"cif"`` or ``"llamat"``.
        tasks: subset of :data:`TASKS` (default all).
        weights: per-task inclusion rates overriding the defaults.
        seed: makes the mix reproducible.
        n_jobs: worker processes (writing and re-reading CIFs is ~0.2 s of CPU per structure).
        progress: show a rich progress bar.
        total: number of records, for the progress bar.
    """
    tasks = tuple(tasks or TASKS)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {TASKS}")
    w = {**DEFAULT_WEIGHTS, **(weights or {})}
    jobs = ((i, sid, structure, props, fmt, tasks, w, seed)
            for i, (sid, structure, props) in enumerate(records))
    mix = TaskMix()
    from llamat_cif.progress import progress_bar

    with progress_bar(enabled=progress) as bar:
        task_id = bar.add_task(f"instruction mix ({fmt})", total=total)
        if n_jobs > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(n_jobs) as pool:
                results = pool.map(_structure_examples, jobs, chunksize=16)
                _collect(mix, results, bar, task_id)
        else:
            _collect(mix, map(_structure_examples, jobs), bar, task_id)
    return mix


def _collect(mix: TaskMix, results: Iterable[tuple[str, list[InstructionExample], str | None]],
             bar: Any, task_id: Any) -> None:
    for sid, made, error in results:
        mix.n_structures += 1
        if error is None:
            mix.examples.extend(made)
        else:
            mix.skipped.append((sid, error))
        bar.advance(task_id)


def _structure_examples(job: tuple) -> tuple[str, list[InstructionExample], str | None]:
    """All examples of one structure, or none and the reason (runs in a worker process)."""
    i, sid, structure, props, fmt, tasks, w, seed = job
    sid = str(sid)
    if structure is None:
        return sid, [], str(props.get("error", "unreadable structure"))
    from llamat_cif.cif import from_text, to_text

    rng = np.random.default_rng([seed, i])
    made: list[InstructionExample] = []
    try:
        with warnings.catch_warnings():
            # pymatgen reports each snap of a rounded coordinate to a special position: expected
            warnings.simplefilter("ignore", UserWarning)
            text = to_text(structure, fmt)
            written = None
            for task in tasks:
                n = int(w[task]) + (rng.random() < w[task] - int(w[task]))
                for _ in range(n):
                    if written is None and task != "generate":
                        written = from_text(text, fmt)
                    ex = make_example(task, structure, props, sid=sid, fmt=fmt, rng=rng, text=text,
                                      written=written)
                    if ex is not None:
                        made.append(ex)
    except Exception as exc:  # noqa: BLE001 - one bad structure must not stop the mix
        return sid, [], f"{type(exc).__name__}: {exc}"
    return sid, made, None


def task_mix_from_dataset(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    limit: int | None = None,
    fmt: str = "cif",
    tasks: Sequence[str] | None = None,
    weights: dict[str, float] | None = None,
    seed: int = 0,
    n_jobs: int = 1,
    progress: bool = False,
) -> list[InstructionExample]:
    """The task mix of a registered dataset split (see :mod:`llamat_cif.data`).

    Raises:
        ValueError: when no structure of the split gives an example.
    """
    from llamat_cif.data import iter_structures, load_split

    total = len(load_split(name, split, data_dir=data_dir, limit=limit)) if progress else None
    mix = build_task_mix(iter_structures(name, split, data_dir=data_dir, limit=limit), fmt=fmt,
                         tasks=tasks, weights=weights, seed=seed, n_jobs=n_jobs, progress=progress,
                         total=total)
    if not mix.examples:
        reasons = "; ".join(f"{i}: {r}" for i, r in mix.skipped[:3])
        raise ValueError(f"no instruction examples from {name}/{split} ({mix.n_structures} structures; {reasons})")
    return mix.examples


def split_examples(
    examples: Sequence[InstructionExample], *, val_fraction: float = 0.02, seed: int = 0
) -> tuple[list[InstructionExample], list[InstructionExample]]:
    """Hold out ``val_fraction`` of the *structures* (all their examples) for validation.

    Splitting by structure keeps a crystal seen in training out of the validation loss.
    """
    ids = sorted({e.id for e in examples})
    if val_fraction <= 0 or len(ids) < 2:
        return list(examples), []
    n_val = max(1, int(round(len(ids) * val_fraction)))
    perm = np.random.default_rng(seed).permutation(len(ids))
    val_ids = {ids[i] for i in perm[:n_val]}
    train = [e for e in examples if e.id not in val_ids]
    val = [e for e in examples if e.id in val_ids]
    return train, val
