"""Grammar-constrained decoding: the sampler may only write text that is a crystal.

A document grammar is a Python generator that yields *field specs* and receives the value the model
wrote for each one. A per-sequence :class:`Decoder` turns the current spec into the set of token ids
allowed next, and advances when a token is chosen. The grammars below follow the canonical texts
of :mod:`llamat_cif.cif` exactly, so every finished sequence parses, and they hold the composition
to the requested (or self-declared) formula, the lattice to the space group's crystal system, the
site multiplicities to the group's orbit sizes, and — once the lattice is known — refuse a site that
would sit closer than ``min_distance`` to an atom already placed (periodic images and, in the CIF
grammar, symmetry copies included).

Field specs:

* :class:`Lit` — fixed text (forced token by token);
* :class:`Choice` — one token out of a set (elements, space-group symbols, header keys);
* :class:`Num` — a non-negative decimal number written digit by digit, within ``[lo, hi]``, with a
  fixed number of decimals, ended by one of ``ends``; an optional ``accept`` callback vetoes the
  last digit (used for the distance and orbit checks);
* :class:`End` — end of document (EOS).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from llamat_cif.cif import CIF_SITE_TAGS


@dataclass
class Lit:
    text: str


@dataclass
class Choice:
    options: dict[int, str]  # token id -> value


@dataclass
class Num:
    lo: float
    hi: float
    decimals: int
    ends: tuple[str, ...]
    max_int_digits: int = 3
    allowed: frozenset[int] | None = None  # integer fields: the only admissible values
    accept: Callable[[float], bool] | None = None  # veto on complete values (checked at last digit)
    values: np.ndarray | None = None  # fractional fields: the only admissible values (+- 0.6e-4)
    probe: bool = True  # also test sampled completions of non-final digits with ``accept``


@dataclass
class End:
    pass


Spec = Lit | Choice | Num | End
Grammar = Generator[Spec, object, None]


@dataclass
class Stats:
    """Counts of constraint interventions, summed over a run."""

    fallbacks: int = 0  # the constraint found no admissible continuation and let the model choose
    distance_vetoes: int = 0


class Vocab:
    """Token bookkeeping for the grammar (built once per tokenizer)."""

    def __init__(self, tok) -> None:
        from llamat_cif.tokenizer import element_symbols, space_group_symbols

        self.tok = tok
        v = tok.get_vocab()
        self.id_of = v
        self.eos = tok.eos_token_id
        self.digits = {str(d): v[str(d)] for d in range(10)}
        self.digit_of = {i: d for d, i in self.digits.items()}
        self.dot = v["."]
        self.elements = {v[e]: e for e in element_symbols() if e in v}
        self.element_id = {e: i for i, e in self.elements.items()}
        self.sg_symbols = space_group_symbols()
        self.sg_id = {s: v[s] for s in self.sg_symbols if s in v}
        self.header = {k: v[f"# {k}: "] for k in ("formula", "spacegroup") if f"# {k}: " in v}
        self.char = {c: v[c] for c in (" ", "\n", "'") if c in v}

    @lru_cache(maxsize=4096)  # noqa: B019 - one Vocab per run; literals repeat across sequences
    def encode(self, text: str) -> tuple[int, ...]:
        return tuple(self.tok(text, add_special_tokens=False)["input_ids"])


class Decoder:
    """Walks one sequence through a grammar; tells which tokens may come next."""

    def __init__(self, grammar: Grammar, vocab: Vocab, stats: Stats) -> None:
        self.g = grammar
        self.v = vocab
        self.stats = stats
        self.done = False
        self.buf = ""
        self.lit: tuple[int, ...] = ()
        self.lit_pos = 0
        self._set(next(self.g))

    def _set(self, spec: Spec) -> None:
        if isinstance(spec, Num) and spec.values is not None and spec.accept is not None and len(spec.values):
            # A finite set of positions: check them all now, so a veto is seen at the first digit
            # instead of leaving the last digit with nowhere to go.
            ok = np.array([v for v in spec.values if spec.accept(float(v))])
            self.stats.distance_vetoes += len(spec.values) - len(ok)
            if len(ok):
                spec = Num(spec.lo, spec.hi, spec.decimals, spec.ends, spec.max_int_digits, spec.allowed,
                           None, ok, spec.probe)
            else:
                self.stats.fallbacks += 1
                spec = Num(spec.lo, spec.hi, spec.decimals, spec.ends, spec.max_int_digits, spec.allowed,
                           None, spec.values, spec.probe)
        self.spec = spec
        self.buf = ""
        if isinstance(spec, Lit):
            self.lit, self.lit_pos = self.v.encode(spec.text), 0
            if not self.lit:
                self._send(None)

    def _send(self, value) -> None:
        try:
            self._set(self.g.send(value))
        except StopIteration:
            self._set(End())

    # -------------------------------------------------------------------------------- allowed
    def allowed(self) -> list[int]:
        s = self.spec
        if isinstance(s, End):
            return [self.v.eos]
        if isinstance(s, Lit):
            return [self.lit[self.lit_pos]]
        if isinstance(s, Choice):
            return list(s.options)
        return self._num_allowed(s)

    def _num_allowed(self, s: Num) -> list[int]:
        out = []
        buf = self.buf
        if "." not in buf:
            for d, tid in self.v.digits.items():
                cand = buf + d
                if len(cand) > 1 and cand[0] == "0":
                    continue  # no leading zeros
                if len(cand) > s.max_int_digits:
                    continue
                if self._int_feasible(s, cand):
                    out.append(tid)
            if buf and s.decimals > 0 and self._interval_ok(s, float(buf), float(buf) + 1 - 10.0**-s.decimals):
                out.append(self.v.dot)
            if buf and s.decimals == 0 and self._value_ok(s, float(buf)):
                out += [self.v.id_of[e] for e in s.ends]
        else:
            frac = buf.split(".")[1]
            if len(frac) < s.decimals:
                last = len(frac) + 1 == s.decimals
                step = 10.0 ** -(len(frac) + 1)
                for d, tid in self.v.digits.items():
                    lo = float(buf + d)
                    hi = lo + step - 10.0**-s.decimals
                    if not self._interval_ok(s, lo, hi):
                        continue
                    if s.accept is not None and (last or s.probe):
                        # last digit: exact; earlier: some completion in the interval must pass
                        probes = [lo] if last else np.linspace(lo, hi, 11)
                        if not any(s.accept(float(p)) for p in probes):
                            self.stats.distance_vetoes += 1
                            continue
                    out.append(tid)
                if not out and last:
                    # Every final digit was vetoed: let the model choose among in-range digits
                    # rather than stall (counted, reported with the run).
                    self.stats.fallbacks += 1
                    out = [tid for d, tid in self.v.digits.items()
                           if self._interval_ok(s, float(buf + d), float(buf + d))]
            else:
                out += [self.v.id_of[e] for e in s.ends]
        if not out:
            self.stats.fallbacks += 1
            out = [self.v.id_of[e] for e in s.ends] if buf and buf[-1] != "." else list(self.v.digits.values())
        return out

    def _int_feasible(self, s: Num, cand: str) -> bool:
        """Can an integer part that starts with ``cand`` still end inside ``[lo, hi]``?"""
        if s.allowed is not None:
            return any(str(a).startswith(cand) for a in s.allowed)
        v = int(cand)
        for k in range(0, s.max_int_digits - len(cand) + 1):  # k more integer digits
            if k and v == 0:
                break  # "0" cannot be extended
            lo = v * 10**k
            if s.decimals == 0:
                hi = lo if k == 0 else (v + 1) * 10**k - 1
            else:
                hi = (v + 1) * 10**k - 10.0**-s.decimals
            if self._interval_ok(s, lo, hi):
                return True
        return False

    def _interval_ok(self, s: Num, lo: float, hi: float) -> bool:
        if not (lo <= s.hi + 1e-9 and hi >= s.lo - 1e-9):
            return False
        if s.values is not None:
            # 4-decimal text: an admissible value must be written to within rounding (0.5e-4)
            tol = 0.6e-4
            v = s.values
            # values near 1 may be written as 0.0000 after wrapping
            return bool(np.any((v >= lo - tol) & (v <= hi + tol)) or np.any((v - 1 >= lo - tol) & (v - 1 <= hi + tol)))
        return True

    def _value_ok(self, s: Num, v: float) -> bool:
        if s.allowed is not None:
            return int(v) in s.allowed
        return s.lo - 1e-9 <= v <= s.hi + 1e-9

    # -------------------------------------------------------------------------------- advance
    def advance(self, tid: int) -> None:
        if self.done:
            return
        s = self.spec
        if isinstance(s, End):
            self.done = True
        elif isinstance(s, Lit):
            self.lit_pos += 1
            if self.lit_pos >= len(self.lit):
                self._send(None)
        elif isinstance(s, Choice):
            if tid == self.v.eos:
                self.done = True  # a grammar may offer EOS as a choice (end of an open list)
                return
            self._send(s.options.get(tid))
        else:
            if tid in self.v.digit_of:
                self.buf += self.v.digit_of[tid]
            elif tid == self.v.dot:
                self.buf += "."
            else:
                end = self.v.tok.convert_ids_to_tokens(tid)
                self._send((float(self.buf) if self.buf else 0.0, end))


# ----------------------------------------------------------------------------- shared pieces


@dataclass
class Conditions:
    """What a sample must satisfy (``None``: the model chooses)."""

    formula: dict[str, float] | None = None  # reduced composition (element -> amount)
    spacegroup: int | None = None
    min_distance: float | None = 0.5  # Å; None switches the distance constraint off
    max_atoms: int = 64  # per written cell (CIF: conventional cell)
    max_elements: int = 6
    max_count: int = 96  # per element in a cell


def _formula_items(comp: dict[str, float]) -> list[tuple[str, int]]:
    from pymatgen.core import Composition

    c = Composition(comp)
    return [(el.symbol, int(round(amt))) for el, amt in
            sorted(c.items(), key=lambda kv: (kv[0].X if not math.isnan(kv[0].X) else 99, kv[0].symbol))]


def formula_field(v: Vocab, cond: Conditions, *, end: str = "\n", spacegroup: int | None = None,
                  stats: Stats | None = None) -> Generator[Spec, object, dict[str, int]]:
    """Write "El<n> El<n> ..." (pymatgen order when conditioned) and return the counts.

    With a known space group, every count must be a sum of its Wyckoff multiplicities.
    """
    counts: dict[str, int] = {}
    reach = reachable_counts(spacegroup, cond.max_atoms) if spacegroup else None
    if cond.formula:
        items = _formula_items(cond.formula)
        max_k = max(1, cond.max_atoms // sum(n for _, n in items))
        ks = [k for k in range(1, max_k + 1) if reach is None or all(n * k in reach for _, n in items)]
        if not ks:  # the requested formula cannot fill this space group within max_atoms
            if stats is not None:
                stats.fallbacks += 1
            ks = list(range(1, max_k + 1))
        first_el, first_n = items[0]
        yield Lit(first_el)
        kval, _ = yield Num(1, first_n * max_k, 0, (" " if len(items) > 1 else end,),
                            allowed=frozenset(first_n * k for k in ks))
        k = int(kval) // first_n
        counts[first_el] = first_n * k
        rest = " ".join(f"{el}{n * k}" for el, n in items[1:])
        for el, n in items[1:]:
            counts[el] = n * k
        yield Lit(rest + end if rest else "")
        return counts
    total = 0
    while True:
        remaining_atoms = cond.max_atoms - total
        options = {i: e for i, e in v.elements.items() if e not in counts}
        el = yield Choice(options)
        last = len(counts) + 1 >= cond.max_elements
        ends = (end,) if last else (" ", end)
        hi = min(cond.max_count, remaining_atoms)
        allowed = frozenset(c for c in reach if 1 <= c <= hi) if reach is not None else None
        n, how = yield Num(1, hi, 0, ends, allowed=allowed or None)
        counts[el] = int(n)
        total += int(n)
        if how == end or total >= cond.max_atoms:
            if how != end:
                yield Lit(end)
            return counts


def _lattice_matrix(a, b, c, al, be, ga) -> np.ndarray:
    from pymatgen.core import Lattice

    return Lattice.from_parameters(a, b, c, al, be, ga).matrix


_SHIFTS = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], dtype=float)


def min_distance(frac_new: np.ndarray, frac_old: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Minimum periodic distance (Å) from each new point to any old point (27 images)."""
    if len(frac_old) == 0:
        return np.full(len(frac_new), np.inf)
    d = frac_new[:, None, :] - frac_old[None, :, :]
    d -= np.round(d)
    d = d[:, :, None, :] + _SHIFTS[None, None, :, :]
    cart = d @ matrix
    return np.sqrt((cart**2).sum(-1)).min(axis=(1, 2))


# --------------------------------------------------------------------------------- header


def header_fields(v: Vocab, cond: Conditions, *, want_formula: bool, want_sg: bool,
                  symmetric: bool = True, stats: Stats | None = None):
    """Both header lines, in the order the model picks; returns (counts, spacegroup number).

    With ``symmetric`` (the CIF grammar) formula and space group are kept compatible: counts that
    the group's Wyckoff multiplicities can add up to, or a group that can hold the counts.
    """
    counts, sg = None, cond.spacegroup
    keys = [k for k, want in (("formula", want_formula), ("spacegroup", want_sg)) if want and k in v.header]
    sg_written = False
    while keys:
        key = yield Choice({v.header[k]: k for k in keys})
        keys.remove(key)
        if key == "formula":
            known = sg if (symmetric and (sg_written or cond.spacegroup)) else None
            counts = yield from formula_field(v, cond, spacegroup=known, stats=stats)
        else:
            if cond.spacegroup:
                yield Lit(f"{cond.spacegroup}\n")
            else:
                allowed = compatible_spacegroups(counts) if (symmetric and counts) else None
                n, _ = yield Num(1, 230, 0, ("\n",), allowed=allowed)
                sg = int(n)
            sg_written = True
    return counts, sg


# ----------------------------------------------------------------------------- CIF grammar


@lru_cache(maxsize=256)
def space_group_ops(number: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetry operations of a space group in spglib's default setting (conventional cell)."""
    import spglib

    for hall in range(1, 531):
        if spglib.get_spacegroup_type(hall).number == number:
            sym = spglib.get_symmetry_from_database(hall)
            return np.asarray(sym["rotations"], dtype=float), np.asarray(sym["translations"], dtype=float)
    raise ValueError(f"no space group {number}")


def orbit(p: np.ndarray, ops: tuple[np.ndarray, np.ndarray], decimals: int = 3) -> np.ndarray:
    """Distinct images of a fractional point under the operations (mod 1, merged at 1e-3)."""
    rots, trans = ops
    imgs = np.mod(np.round(np.einsum("kij,j->ki", rots, p) + trans, decimals), 1.0)
    return np.unique(np.round(imgs, decimals) % 1.0, axis=0)


@lru_cache(maxsize=1)
def _orbit_table() -> dict[int, frozenset[int]]:
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent / "resources" / "orbit_sizes.json"
    if path.is_file():
        return {int(k): frozenset(v) for k, v in json.loads(path.read_text())["sizes"].items()}
    return {}


def reachable_counts(number: int, limit: int = 200) -> frozenset[int]:
    """Atom counts of one element a cell of this space group can hold (sums of orbit sizes)."""
    return _reachable(tuple(sorted(orbit_sizes(number))), limit)


def compatible_spacegroups(counts: dict[str, int]) -> frozenset[int]:
    """Space groups in which every element count is a sum of Wyckoff multiplicities."""
    top = max(counts.values())
    return frozenset(n for n in range(1, 231) if all(c in reachable_counts(n, top) for c in counts.values()))


@lru_cache(maxsize=256)
def orbit_sizes(number: int) -> frozenset[int]:
    """Wyckoff multiplicities of a space group (precomputed table, else :func:`_orbit_sizes`)."""
    table = _orbit_table()
    return table[number] if number in table else _orbit_sizes(number)


@lru_cache(maxsize=256)
def _orbit_sizes(number: int) -> frozenset[int]:
    """Multiplicities a Wyckoff orbit can have: |G| / |site stabiliser| (divisors of |G| that occur
    on a grid of special points; a superset is harmless, the orbit check at the last digit is exact)."""
    rots, trans = space_group_ops(number)
    n = len(rots)
    grid = [0, 1 / 8, 1 / 6, 1 / 4, 1 / 3, 1 / 2, 2 / 3, 3 / 4, 5 / 6, 0.1234]
    sizes = set()
    for p in np.array([[x, y, z] for x in grid for y in grid for z in grid]):
        sizes.add(len(orbit(p, (rots, trans))))
    sizes.add(n)
    return frozenset(s for s in sizes if n % s == 0)


@lru_cache(maxsize=2048)
def wyckoff_subspaces(number: int, m: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Affine subspaces ``p0 + B t`` (mod 1) whose points have orbit size ``m`` (special positions).

    Derived from the operations alone: points of a 1/24 grid (which holds a point of every Wyckoff
    position of every space group in its standard setting) are grouped by stabiliser; the subspace of
    a stabiliser H through p0 is p0 + null(W - I for W in H). For the general position (m = |G|) the
    subspace is the whole cell.
    """
    from scipy.linalg import null_space

    rots, trans = space_group_ops(number)
    n = len(rots)
    if m == n:
        return ((np.zeros(3), np.eye(3)),)
    g = np.arange(24) / 24
    pts = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    d = np.einsum("kij,pj->kpi", rots, pts) + trans[:, None, :] - pts[None]
    fixed = (np.abs(d - np.round(d)) < 1e-6).all(-1)  # (ops, points)
    sizes = n // fixed.sum(0)
    out: list[tuple[np.ndarray, np.ndarray]] = []
    seen: dict[bytes, list[int]] = {}
    for j in np.nonzero(sizes == m)[0]:
        key = fixed[:, j].tobytes()
        p0 = pts[j]
        members = seen.setdefault(key, [])
        if members:
            # the same stabiliser can fix parallel subspaces: keep p0 unless it lies on a kept one
            on = False
            for idx in members:
                q0, b = out[idx]
                diff = p0 - q0
                diff -= np.round(diff)
                if b.shape[1] == 0:
                    on = np.abs(diff).max() < 1e-6
                else:
                    t, *_ = np.linalg.lstsq(b, diff, rcond=None)
                    r = diff - b @ t
                    on = np.abs(r - np.round(r)).max() < 1e-6
                if on:
                    break
            if on:
                continue
        w = rots[fixed[:, j]]
        a = (w - np.eye(3)).reshape(-1, 3)
        basis = null_space(a) if np.abs(a).max() > 0 else np.eye(3)
        members.append(len(out))
        out.append((p0, basis))
    return tuple(out)


@lru_cache(maxsize=200_000)
def solve_values(number: int, m: int, typed: tuple[tuple[int, float], ...], target: int):
    """Memoised :func:`_solve_values` on the Wyckoff subspaces of (space group, multiplicity)."""
    return _solve_values(wyckoff_subspaces(number, m), dict(typed), target)


def _solve_values(subspaces, typed: dict[int, float], target: int, tol: float = 2.5e-4):
    """Values the ``target`` coordinate can take on the subspaces, given typed coordinates.

    Returns ``None`` when some subspace leaves it free, else a sorted array of admissible values
    (mod 1). Typed coordinates are 4-decimal roundings, hence the tolerance.
    """
    import itertools

    vals: list[float] = []
    for p0, b in subspaces:
        idx = list(typed)
        if b.shape[1] == 0:
            diff = np.array([typed[i] - p0[i] for i in idx])
            if np.all(np.abs(diff - np.round(diff)) < tol):
                vals.append(p0[target] % 1.0)
            continue
        bt = b[idx] if idx else np.zeros((0, b.shape[1]))
        # free in the target direction once typed coordinates are held: a null direction of bt
        # with a non-zero target component
        if idx:
            from scipy.linalg import null_space

            ns = null_space(bt) if bt.size else np.eye(b.shape[1])
        else:
            ns = np.eye(b.shape[1])
        if ns.size and np.abs(b[target] @ ns).max() > 1e-6:
            # only if the typed coordinates are reachable at all
            if not idx:
                return None
            ok = False
            for ks in itertools.product(range(-2, 3), repeat=len(idx)):
                rhs = np.array([typed[i] + k - p0[i] for i, k in zip(idx, ks, strict=True)])
                t, *_ = np.linalg.lstsq(bt, rhs, rcond=None)
                if np.abs(bt @ t - rhs).max() < tol:
                    ok = True
                    break
            if ok:
                return None
            continue
        if not idx:
            vals.append(p0[target] % 1.0)
            continue
        for ks in itertools.product(range(-2, 3), repeat=len(idx)):
            rhs = np.array([typed[i] + k - p0[i] for i, k in zip(idx, ks, strict=True)])
            t, *_ = np.linalg.lstsq(bt, rhs, rcond=None)
            if np.abs(bt @ t - rhs).max() < tol:
                vals.append(float((p0[target] + b[target] @ t) % 1.0))
    if not vals:
        return np.zeros(0)
    v = np.round(np.array(vals), 4) % 1.0
    return np.unique(v)


#: Probe values for free coordinates in the lookahead: off the special values 0, 1/4, 1/3, 1/2 ...
_PROBE = np.linspace(0.0123, 0.9877, 9)


def crystal_system(number: int) -> str:
    for hi, name in ((2, "triclinic"), (15, "monoclinic"), (74, "orthorhombic"), (142, "tetragonal"),
                     (167, "trigonal"), (194, "hexagonal"), (230, "cubic")):
        if number <= hi:
            return name
    raise ValueError(number)


def cif_grammar(v: Vocab, cond: Conditions, stats: Stats, *, header: bool = True):
    """The canonical CIF of :func:`llamat_cif.cif.to_text`, conditioning header first."""
    from pymatgen.core import Composition

    if not header:
        raise ValueError("the CIF grammar needs the conditioning header (the formula comes first)")
    counts, sg = yield from header_fields(v, cond, want_formula=True, want_sg=True, stats=stats)
    comp = Composition(counts)
    yield Lit(f"data_{comp.reduced_formula}\n_symmetry_space_group_name_H-M ")
    if sg:
        symbol = v.sg_symbols[sg - 1]
        yield Lit(symbol)
    else:
        symbol = yield Choice({i: s for s, i in v.sg_id.items()})
        sg = v.sg_symbols.index(symbol) + 1
    yield Lit(f"\n_symmetry_Int_Tables_number {sg}\n_cell_length_a ")
    system = crystal_system(sg)
    rhombo_hex = symbol.startswith("R")
    a, _ = yield Num(1.0, 60.0, 3, ("\n",), max_int_digits=2)
    if system in ("tetragonal", "trigonal", "hexagonal", "cubic") or rhombo_hex:
        b = a
        yield Lit(f"_cell_length_b {a:.3f}\n_cell_length_c ")
    else:
        yield Lit("_cell_length_b ")
        b, _ = yield Num(1.0, 60.0, 3, ("\n",), max_int_digits=2)
        yield Lit("_cell_length_c ")
    if system == "cubic":
        c = a
        yield Lit(f"{a:.3f}\n")
    else:
        c, _ = yield Num(1.0, 60.0, 3, ("\n",), max_int_digits=2)
    if system in ("trigonal", "hexagonal") or rhombo_hex:
        al, be, ga = 90.0, 90.0, 120.0
        yield Lit("_cell_angle_alpha 90.00\n_cell_angle_beta 90.00\n_cell_angle_gamma 120.00\n")
    elif system == "triclinic":
        yield Lit("_cell_angle_alpha ")
        al, _ = yield Num(30.0, 150.0, 2, ("\n",))
        yield Lit("_cell_angle_beta ")
        be, _ = yield Num(30.0, 150.0, 2, ("\n",))
        yield Lit("_cell_angle_gamma ")
        ga, _ = yield Num(30.0, 150.0, 2, ("\n",))
    elif system == "monoclinic":
        al, ga = 90.0, 90.0
        yield Lit("_cell_angle_alpha 90.00\n_cell_angle_beta ")
        be, _ = yield Num(30.0, 150.0, 2, ("\n",))
        yield Lit("_cell_angle_gamma 90.00\n")
    else:
        al = be = ga = 90.0
        yield Lit("_cell_angle_alpha 90.00\n_cell_angle_beta 90.00\n_cell_angle_gamma 90.00\n")
    matrix = _lattice_matrix(a, b, c, al, be, ga)
    volume = abs(float(np.linalg.det(matrix)))
    _, z = comp.get_reduced_composition_and_factor()
    sum_formula = " ".join(f"{el}{n}" for el, n in counts.items())
    yield Lit(f"_chemical_formula_sum '{sum_formula}'\n_cell_volume {volume:.2f}\n"
              f"_cell_formula_units_Z {int(round(z))}\nloop_\n" + "\n".join(CIF_SITE_TAGS) + "\n")

    ops = space_group_ops(sg)
    sizes = sorted(orbit_sizes(sg))
    reach = _reachable(tuple(sizes), max(counts.values()))
    remaining = dict(counts)
    placed = np.zeros((0, 3))
    i = 0
    while any(remaining.values()):
        el = yield Choice({v.element_id[e]: e for e, r in remaining.items() if r > 0})
        yield Lit(f" {el}{i} ")
        r = remaining[el]
        mults = frozenset(m for m in sizes if m <= r and (r - m) in reach)
        if not mults:  # unreachable remainder (should not happen): allow any orbit size <= r
            stats.fallbacks += 1
            mults = frozenset(m for m in sizes if m <= r) or frozenset({min(sizes)})

        def placeable(mm: int, placed_now=placed) -> bool:
            """A multiplicity whose Wyckoff positions are all points needs one still free."""
            subs_m = wyckoff_subspaces(sg, mm)
            if not subs_m or any(b.shape[1] > 0 for _, b in subs_m):
                return True
            for p0, _ in subs_m:
                pts = orbit(p0, ops)
                if len(pts) != mm:
                    continue
                if cond.min_distance is None or min_distance(pts, placed_now, matrix).min() >= cond.min_distance:
                    return True
            return False

        free = frozenset(mm for mm in mults if placeable(mm))
        if free:
            mults = free
        else:
            stats.fallbacks += 1
        m, _ = yield Num(1, max(mults), 0, (" ",), allowed=mults)
        m = int(m)
        subs = wyckoff_subspaces(sg, m)

        placed_before = placed

        def site_ok(p: np.ndarray, m=m, placed_before=placed_before) -> bool:
            pts = orbit(p, ops)
            if len(pts) != m:
                return False
            if cond.min_distance is None:
                return True
            if len(pts) > 1 and min_distance(pts[:1], pts[1:], matrix).min() < cond.min_distance:
                return False
            return bool(min_distance(pts, placed_before, matrix).min() >= cond.min_distance)

        def orbit_ok(xv: float, yv: float | None = None, m=m, subs=subs) -> bool:
            """Some completion of the typed coordinates is an admissible site (orbit size m,
            distances): a lookahead so that z is not left with nowhere to go."""
            xv = round(xv, 4)
            if yv is None:
                ys_ = solve_values(sg, m, ((0, xv),), 1)
                ys_ = _PROBE[::2] if ys_ is None else ys_
            else:
                ys_ = [round(yv, 4)]
            for yy in ys_:
                zs_ = solve_values(sg, m, ((0, xv), (1, round(float(yy), 4))), 2)
                for zz in (_PROBE[::2] if zs_ is None else zs_):
                    if site_ok(np.array([xv, float(yy), float(zz)])):
                        return True
            return False

        xs = solve_values(sg, m, (), 0) if subs else None
        x, _ = yield Num(0.0, 0.9999, 4, (" ",), max_int_digits=1, values=xs,
                         accept=lambda xv: orbit_ok(xv), probe=False)
        ys = solve_values(sg, m, ((0, round(x, 4)),), 1) if subs else None
        y, _ = yield Num(0.0, 0.9999, 4, (" ",), max_int_digits=1, values=ys if ys is None or len(ys) else None,
                         accept=lambda yv, x=x: orbit_ok(x, yv), probe=False)
        zs = solve_values(sg, m, ((0, round(x, 4)), (1, round(y, 4))), 2) if subs else None
        zs = zs if zs is None or len(zs) else None
        placed_now = placed

        def accept(zv: float, x=x, y=y, m=m, placed_now=placed_now) -> bool:
            pts = orbit(np.array([x, y, zv]), ops)
            if len(pts) != m:
                return False  # the stated multiplicity must be the orbit the reader will generate
            if cond.min_distance is None:
                return True
            if len(pts) > 1:
                own = min_distance(pts[:1], pts[1:], matrix)
                if own.min() < cond.min_distance:
                    return False
            return bool(min_distance(pts, placed_now, matrix).min() >= cond.min_distance)

        zv, _ = yield Num(0.0, 0.9999, 4, (" ",), max_int_digits=1, accept=accept, values=zs)
        yield Lit("1\n")
        placed = np.vstack([placed, orbit(np.array([x, y, zv]), ops)])
        remaining[el] = max(0, r - m)
        i += 1
    yield End()


@lru_cache(maxsize=256)
def _reachable(sizes: tuple[int, ...], limit: int) -> frozenset[int]:
    ok = [False] * (limit + 1)
    ok[0] = True
    for t in range(1, limit + 1):
        ok[t] = any(t >= s and ok[t - s] for s in sizes)
    return frozenset(t for t in range(limit + 1) if ok[t])


# --------------------------------------------------------------------------- LLaMat grammar


def llamat_grammar(v: Vocab, cond: Conditions, stats: Stats, *, header: bool = True):
    """The P1 LLaMat/Gruver text: lengths, angles, then element and coordinate lines."""
    counts = None
    if header:
        counts, _ = yield from header_fields(v, cond, want_formula=True, want_sg=True, symmetric=False)
    a, _ = yield Num(1.0, 60.0, 1, (" ",), max_int_digits=2)
    b, _ = yield Num(1.0, 60.0, 1, (" ",), max_int_digits=2)
    c, _ = yield Num(1.0, 60.0, 1, ("\n",), max_int_digits=2)
    al, _ = yield Num(30, 150, 0, (" ",))
    be, _ = yield Num(30, 150, 0, (" ",))
    ga, _ = yield Num(30, 150, 0, ("\n",))
    matrix = _lattice_matrix(a, b, c, al, be, ga)
    remaining = dict(counts) if counts else None
    placed = np.zeros((0, 3))
    n = 0
    while True:
        if remaining is not None:
            if not any(remaining.values()):
                break
            options = {v.element_id[e]: e for e, r in remaining.items() if r > 0}
        else:
            options = dict(v.elements)
            if n > 0:
                options[v.eos] = None  # unconditional: the model may stop after any site
            if n >= cond.max_atoms:
                break
        el = yield Choice(options)
        if el is None:
            return
        yield Lit("\n")
        x, _ = yield Num(0.0, 0.99, 2, (" ",), max_int_digits=1)
        y, _ = yield Num(0.0, 0.99, 2, (" ",), max_int_digits=1)
        placed_now = placed

        def accept(zv: float, x=x, y=y, placed_now=placed_now) -> bool:
            if cond.min_distance is None:
                return True
            return bool(min_distance(np.array([[x, y, zv]]), placed_now, matrix)[0] >= cond.min_distance)

        zv, _ = yield Num(0.0, 0.99, 2, ("\n",), max_int_digits=1, accept=accept)
        placed = np.vstack([placed, [x, y, zv]])
        if remaining is not None:
            remaining[el] -= 1
        n += 1
    yield End()


GRAMMARS = {"cif": cif_grammar, "llamat": llamat_grammar}

