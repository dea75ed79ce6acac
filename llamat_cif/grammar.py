"""Grammar-constrained decoding: the sampler may only write text that is a crystal.

A document grammar is a Python generator that yields *field specs* and receives the value the model
wrote for each one. A per-sequence :class:`Decoder` turns the current spec into the set of token ids
allowed next, and advances when a token is chosen. The grammars below follow the canonical texts
of :mod:`llamat_cif.cif` exactly, so every finished sequence parses, and they hold the composition
to the requested (or self-declared) formula, the lattice to the space group's crystal system, the
site multiplicities to the group's orbit sizes, and — once the lattice is known — refuse a site that
would sit closer than ``min_distance`` to an atom already placed (periodic images and, in the CIF
grammar, symmetry copies included). The CIF grammar also looks ahead (:mod:`llamat_cif.placement`):
it only offers a choice from which the whole composition can still be placed, so a finished
sequence cannot end up with overlapping sites or a composition other than the one it declared.

A spec's ``accept`` check can be expensive: :meth:`Decoder.allowed` gives the cheap syntactic set
and :meth:`Decoder.check` the look-ahead verdict for one token, so a sampler can check only the
tokens it actually draws (see :class:`llamat_cif.sample.GrammarLogitsProcessor`).

Field specs:

* :class:`Lit` — fixed text (forced token by token);
* :class:`Choice` — one token out of a set (elements, space-group symbols, header keys);
* :class:`Num` — a non-negative decimal number written digit by digit, within ``[lo, hi]``, with a
  fixed number of decimals, ended by one of ``ends``; an optional ``accept`` callback vetoes
  values (the last digit exactly, earlier digits on probe points of their interval: distances,
  orbit sizes, room for the rest of the composition);
* :class:`End` — end of document (EOS).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from llamat_cif.cif import CIF_SITE_TAGS
from llamat_cif.protocol import CDVAE_MIN_DISTANCE


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
    probe: bool | str = True  # test non-final digits with ``accept`` on 11 points of their interval;
    # "hi": on the interval's top only (for monotone checks such as "the cell is large enough")
    ends_for: Callable[[float], tuple[str, ...]] | None = None  # integer fields: ends per value
    # fractional fields with ``accept``: values known to pass (read when a digit is checked), tried
    # before the probe points so a narrow admissible window found earlier is not missed
    hints: Callable[[], np.ndarray] | None = None
    # a stricter check the sampler prefers when some token of the nucleus passes it (steering:
    # coordinates keep a wider contact margin when the model's own choices allow one)
    strict_accept: Callable[[float], bool] | None = None
    strict_probe: bool | str | None = None  # how strict_accept is probed (None: as ``probe``)


@dataclass
class End:
    pass


Spec = Lit | Choice | Num | End
Grammar = Generator[Spec, object, None]


@dataclass
class Stats:
    """Counts of constraint interventions, summed over a run."""

    fallbacks: int = 0  # the constraint found no admissible continuation and let the model choose
    distance_vetoes: int = 0  # tokens refused by the look-ahead (distances, orbits, room left)
    optimistic: int = 0  # look-ahead searches that ran out of budget and answered "yes"
    window_widened: int = 0  # volume windows widened because the header's group needed more room


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
            if len(ok) and spec.strict_accept is not None:  # steering: the wider margin where it exists
                ok = np.array([v for v in ok if spec.strict_accept(float(v))]) if any(
                    spec.strict_accept(float(v)) for v in ok) else ok
            if len(ok):
                spec = Num(spec.lo, spec.hi, spec.decimals, spec.ends, spec.max_int_digits, spec.allowed,
                           None, ok, spec.probe, spec.ends_for)
            else:
                self.stats.fallbacks += 1
                spec = Num(spec.lo, spec.hi, spec.decimals, spec.ends, spec.max_int_digits, spec.allowed,
                           None, spec.values, spec.probe, spec.ends_for)
        self.spec = spec
        self.buf = ""
        self._checked: dict[int, bool] = {}
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
        """Tokens the grammar's syntax and ranges allow next (cheap; see :meth:`check`)."""
        s = self.spec
        if isinstance(s, End):
            return [self.v.eos]
        if isinstance(s, Lit):
            return [self.lit[self.lit_pos]]
        if isinstance(s, Choice):
            return list(s.options)
        return self._num_allowed(s)

    def needs_check(self) -> bool:
        """Whether tokens from :meth:`allowed` must still pass the (expensive) :meth:`check`."""
        return isinstance(self.spec, Num) and self.spec.accept is not None

    def can_steer(self) -> bool:
        """Whether the current field has a stricter, preferred check (see :meth:`check`)."""
        return self.needs_check() and self.spec.strict_accept is not None

    def check(self, tid: int, *, strict: bool = False) -> bool:
        """The look-ahead veto: does some completion of the field after ``tid`` pass ``accept``
        (with ``strict``: the field's preferred ``strict_accept``)?

        Fractional digits test their whole interval (the last digit exactly, earlier ones on
        probe points); an integer field tests its value at the end token. Memoised per position.
        """
        s = self.spec
        if not self.needs_check():
            return True
        if strict:
            if s.strict_accept is None:
                return self.check(tid)
            key = ("strict", tid)
            if key not in self._checked:
                probe = s.probe if s.strict_probe is None else s.strict_probe
                self._checked[key] = self._verdict(replace(s, accept=s.strict_accept, probe=probe), tid)
            return self._checked[key]
        if tid in self._checked:
            return self._checked[tid]
        ok = self._verdict(s, tid)
        if not ok:
            self.stats.distance_vetoes += 1
        self._checked[tid] = ok
        return ok

    def _verdict(self, s: Num, tid: int) -> bool:
        ok = True
        buf = self.buf
        if tid in self.v.digit_of and "." in buf:
            frac = buf.split(".")[1]
            step = 10.0 ** -(len(frac) + 1)
            lo = float(buf + self.v.digit_of[tid])
            hi = lo + step - 10.0**-s.decimals
            ok = self._interval_accepts(s, lo, hi, exact=len(frac) + 1 == s.decimals)
        elif tid in self.v.digit_of and s.probe == "hi" and s.decimals > 0:
            # an integer digit of a monotone field: the largest value this prefix can still reach
            top = self._prefix_top(s, buf + self.v.digit_of[tid])
            ok = top is not None and bool(s.accept(top))
        elif tid in self.v.digit_of and s.probe is True and s.decimals > 0 and s.values is None:
            # an integer digit of a probed field: some value this prefix can still reach passes
            ok = any(self._interval_accepts(s, lo, hi, exact=False)
                     for lo, hi in self._prefix_spans(s, buf + self.v.digit_of[tid]))
        elif tid == self.v.dot and s.probe:
            lo = float(buf)
            ok = self._interval_accepts(s, lo, min(s.hi, lo + 1 - 10.0**-s.decimals), exact=False)
        elif tid not in self.v.digit_of and tid != self.v.dot and s.decimals == 0 and buf:
            ok = bool(s.accept(float(buf)))
        return ok

    @staticmethod
    def _prefix_spans(s: Num, cand: str) -> list[tuple[float, float]]:
        """The value intervals within ``[lo, hi]`` whose integer part starts with ``cand``."""
        v, out = int(cand), []
        for k in range(0, s.max_int_digits - len(cand) + 1):
            if k and v == 0:
                break
            lo, hi = max(s.lo, v * 10**k), min(s.hi, (v + 1) * 10**k - 10.0**-s.decimals)
            if lo <= hi + 1e-9:
                out.append((round(lo, s.decimals), round(hi, s.decimals)))
        return out

    @staticmethod
    def _prefix_top(s: Num, cand: str) -> float | None:
        """The largest value within ``[lo, hi]`` whose integer part starts with ``cand``."""
        v = int(cand)
        for k in range(s.max_int_digits - len(cand), -1, -1):  # k more integer digits, longest first
            if k and v == 0:
                continue  # "0" cannot be extended
            lo, hi = v * 10**k, (v + 1) * 10**k - 10.0**-s.decimals
            if lo <= s.hi + 1e-9 and hi >= s.lo - 1e-9:
                return round(min(hi, s.hi), s.decimals)
        return None

    def _interval_accepts(self, s: Num, lo: float, hi: float, *, exact: bool) -> bool:
        if exact:
            return bool(s.accept(lo))
        if not s.probe:
            return True
        if s.probe == "hi":
            return bool(s.accept(hi))
        pts = np.linspace(lo, hi, 11)
        tol = 0.6e-4
        if s.values is not None:  # only the admissible values inside the interval
            pts = s.values[(s.values >= lo - tol) & (s.values <= hi + tol)]
        elif s.hints is not None:
            h = np.asarray(s.hints(), dtype=float).reshape(-1)
            pts = np.concatenate([h[(h >= lo - tol) & (h <= hi + tol)], pts])
        return any(s.accept(float(p)) for p in np.round(pts, s.decimals))

    def allowed_checked(self) -> list[int]:
        """:meth:`allowed` filtered by :meth:`check` (all of them: for tests and non-sampling
        drivers; the sampler checks lazily). With nothing left the syntax-only set is returned
        and a fallback is counted."""
        al = self.allowed()
        if not self.needs_check() or len(al) < 2:
            return al
        ok = [t for t in al if self.check(t)]
        if not ok:
            self.stats.fallbacks += 1
            return al
        return ok

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
                ends = s.ends_for(float(buf)) if s.ends_for is not None else s.ends
                out += [self.v.id_of[e] for e in ends]
        else:
            frac = buf.split(".")[1]
            if len(frac) < s.decimals:
                step = 10.0 ** -(len(frac) + 1)
                for d, tid in self.v.digits.items():
                    lo = float(buf + d)
                    hi = lo + step - 10.0**-s.decimals
                    if self._interval_ok(s, lo, hi):
                        out.append(tid)
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
                self._checked = {}
            elif tid == self.v.dot:
                self.buf += "."
                self._checked = {}
            else:
                end = self.v.tok.convert_ids_to_tokens(tid)
                self._send((float(self.buf) if self.buf else 0.0, end))


# ----------------------------------------------------------------------------- shared pieces


@dataclass
class Conditions:
    """What a sample must satisfy (``None``: the model chooses)."""

    formula: dict[str, float] | None = None  # reduced composition (element -> amount)
    spacegroup: int | None = None
    min_distance: float | None = CDVAE_MIN_DISTANCE  # Å; None switches the distance constraint off
    max_atoms: int = 64  # per written cell (CIF: conventional cell)
    max_elements: int = 6
    max_count: int = 96  # per element in a cell
    charge_balanced: bool = False  # a self-chosen formula must be SMACT-valid (CDVAE compositional validity)
    max_lines: int = 27  # site lines that fit the token budget: site_lines_for(1000)
    # physics (llamat_cif.physics): every pair at least contact_ratio x its covalent-radius sum (0: off)
    contact_ratio: float = 0.0
    # volume per atom within [lo, hi] x the composition-based prediction (None: off)
    volume_window: tuple[float, float] | None = None
    # steering: a coordinate is drawn among tokens that keep this wider contact ratio for the new
    # site whenever the nucleus holds one (0: off); contact_ratio stays the hard rule
    steer_ratio: float = 0.0
    # steering: the last cell length prefers a volume per atom within [lo, hi] x the prediction
    # (the typical range of real crystals) when the model's tokens allow it (None: off)
    volume_steer: tuple[float, float] | None = None


def site_lines_for(max_new_tokens: int) -> int:
    """Site lines a CIF document can have within ``max_new_tokens``: header and lattice take up to
    ~140 tokens, one site line at most 31 (two-digit labels)."""
    return max(1, (max_new_tokens - 140) // 31)


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
        ks = [k for k in range(1, max_k + 1) if reach is None or (
            all(n * k in reach for _, n in items)
            and _allocatable(spacegroup, tuple(n * k for _, n in items), cond.max_lines))]
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
        last = len(counts) + 1 >= cond.max_elements
        hi = min(cond.max_count, cond.max_atoms - total)
        have = tuple(counts.values())
        base = [c for c in (sorted(reach) if reach is not None else range(1, hi + 1)) if 1 <= c <= hi]

        def holds(cs: tuple[int, ...]) -> bool:
            if reach is None:  # no group yet: P1 (one line per atom) or some group must hold it
                return sum(cs) <= cond.max_lines or _spacegroups_for(cs, cond.max_lines) is not None
            return _allocatable(spacegroup, cs, cond.max_lines)

        def can_end(el: str, c: int, have=have, counts=counts) -> bool:
            """The formula may stop after ``el``<c>: the group holds it (and it is charge-balanced)."""
            return holds(have + (c,)) and (not cond.charge_balanced or _balanced({**counts, el: c}))

        def can_continue(c: int, have=have, last=last, total=total) -> bool:
            """Another element may follow ``c``: room in the cell and in the group's positions."""
            room = cond.max_atoms - total - c
            return (not last and room >= 1
                    and any(holds(have + (c, c2)) for c2 in (reach or range(1, room + 1)) if 1 <= c2 <= room))

        options = {i: e for i, e in v.elements.items() if e not in counts}
        if cond.charge_balanced and last:
            options = {i: e for i, e in options.items() if any(can_end(e, c) for c in base)} or options
        el = yield Choice(options)
        allowed = frozenset(c for c in base if can_end(el, c) or can_continue(c))
        if not allowed:
            if stats is not None:
                stats.fallbacks += 1
            # drop the charge balance before the group's capacity: the crystal can still be finished
            allowed = (frozenset(c for c in base if holds(have + (c,))) if cond.charge_balanced else frozenset()) \
                or frozenset(base) or frozenset({1})

        def ends_for(c: float, el=el, can_continue=can_continue, can_end=can_end) -> tuple[str, ...]:
            c = int(c)
            ends = tuple(e for e, ok in ((" ", can_continue(c)), (end, can_end(el, c))) if ok)
            return ends or (end,)

        n, how = yield Num(1, max(allowed), 0, (" ", end), allowed=allowed, ends_for=ends_for)
        counts[el] = int(n)
        total += int(n)
        if how == end or total >= cond.max_atoms:
            if how != end:
                yield Lit(end)
            return counts


@lru_cache(maxsize=100_000)
def _balanced_cached(items: tuple[tuple[str, int], ...]) -> bool:
    from llamat_cif.validators.composition import compositional_validity

    return bool(compositional_validity(dict(items)).ok)


def _balanced(counts: dict[str, int]) -> bool:
    """CDVAE compositional validity (SMACT charge balance + Pauling test, alloys valid)."""
    return _balanced_cached(tuple(sorted(counts.items())))


def _cell_shape_ok(al: float, be: float, ga: float, min_factor: float = 0.2) -> bool:
    """Triclinic angles that make a real, not too flat cell: V / (abc) >= ``min_factor``."""
    ca, cb, cg = (math.cos(math.radians(t)) for t in (al, be, ga))
    g = 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg
    return g > 0 and math.sqrt(g) >= min_factor


def _lattice_matrix(a, b, c, al, be, ga) -> np.ndarray:
    from pymatgen.core import Lattice

    return Lattice.from_parameters(a, b, c, al, be, ga).matrix


_SHIFTS = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], dtype=float)


def min_image_sq(cart: np.ndarray, shift_cart: np.ndarray) -> np.ndarray:
    """Smallest ``|v + s|^2`` over the lattice translations ``shift_cart`` (rows, Å) for every
    vector ``v`` in ``cart`` (last axis 3); shape ``cart.shape[:-1]``.

    Expanded as ``|v|^2 + 2 v.s + |s|^2`` so the work is one matrix product instead of a
    (..., 27, 3) array of differences: the look-ahead asks this ~10^5 times per batch. Rounding
    differs from the direct sum by ~1e-12 Å^2, far below any threshold it is compared with.
    """
    v2 = np.einsum("...k,...k->...", cart, cart)
    d2 = (cart @ (2.0 * shift_cart.T)) + (shift_cart * shift_cart).sum(1)
    return np.maximum(d2.min(-1) + v2, 0.0)


def pair_distances(frac_new: np.ndarray, frac_old: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Periodic distance (Å) from each new point to each old point, shape (new, old) (27 images)."""
    if len(frac_old) == 0 or len(frac_new) == 0:
        return np.zeros((len(frac_new), len(frac_old)))
    d = frac_new[:, None, :] - frac_old[None, :, :]
    d -= np.round(d)
    return np.sqrt(min_image_sq(d @ matrix, _SHIFTS @ matrix))


def min_distance(frac_new: np.ndarray, frac_old: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Minimum periodic distance (Å) from each new point to any old point (27 images)."""
    if len(frac_old) == 0:
        return np.full(len(frac_new), np.inf)
    return pair_distances(frac_new, frac_old, matrix).min(axis=1)


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
                allowed = None
                if symmetric and counts:
                    allowed = _spacegroups_for(tuple(counts.values()), cond.max_lines)
                elif symmetric and cond.formula:  # the formula comes next: groups that can hold it
                    allowed = _spacegroups_for_formula(tuple(n for _, n in _formula_items(cond.formula)),
                                                       cond.max_atoms, cond.max_lines)
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


def _allocatable(number: int, counts: tuple[int, ...], max_lines: int | None = None) -> bool:
    """The group's Wyckoff positions can hold the counts (special points used once), in at most
    ``max_lines`` site lines (the document must end within the token budget)."""
    from llamat_cif.placement import allocatable, min_lines

    key = tuple(sorted(counts, reverse=True))
    return allocatable(number, key) and (max_lines is None or min_lines(number, key) <= max_lines)


@lru_cache(maxsize=4096)
def _spacegroups_for(counts: tuple[int, ...], max_lines: int | None = None) -> frozenset[int] | None:
    """Groups whose Wyckoff positions can hold these element counts (special points used once)."""
    ok = frozenset(n for n in compatible_spacegroups(dict(enumerate(counts))) if _allocatable(n, counts, max_lines))
    return ok or None


@lru_cache(maxsize=4096)
def _spacegroups_for_formula(amounts: tuple[int, ...], max_atoms: int,
                             max_lines: int | None = None) -> frozenset[int] | None:
    """Groups that can hold some multiple k of a reduced formula within ``max_atoms``."""
    top = max(1, max_atoms // sum(amounts))
    ok = frozenset(n for n in range(1, 231) if any(
        all(a * k in reachable_counts(n, a * k) for a in amounts)
        and _allocatable(n, tuple(a * k for a in amounts), max_lines)
        for k in range(1, top + 1)))
    return ok or None


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
                    r = diff - b @ (b.T @ diff)  # b is orthonormal: the least-squares residual
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


#: Integer shifts tried for each typed coordinate (a subspace point may wrap around the cell).
_WRAPS = {n: np.array(list(itertools.product(range(-2, 3), repeat=n)), dtype=float) for n in (1, 2, 3)}


def _solve_values(subspaces, typed: dict[int, float], target: int, tol: float = 2.5e-4):
    """Values the ``target`` coordinate can take on the subspaces, given typed coordinates.

    Returns ``None`` when some subspace leaves it free, else a sorted array of admissible values
    (mod 1). Typed coordinates are 4-decimal roundings, hence the tolerance. For each subspace
    ``p0 + B t`` the typed coordinates are solved for ``t`` under every integer wrap at once.
    """
    from scipy.linalg import null_space

    idx = list(typed)
    tv = np.array([typed[i] for i in idx], dtype=float)
    vals: list[float] = []
    for p0, b in subspaces:
        if b.shape[1] == 0:
            diff = tv - p0[idx]
            if np.all(np.abs(diff - np.round(diff)) < tol):
                vals.append(p0[target] % 1.0)
            continue
        if not idx:
            if np.abs(b[target]).max() > 1e-6:
                return None  # the target coordinate is a free parameter here
            vals.append(p0[target] % 1.0)
            continue
        bt = b[idx]
        rhs = tv[None, :] + _WRAPS[len(idx)] - p0[idx][None, :]  # (wraps, typed)
        t = rhs @ np.linalg.pinv(bt).T  # least-squares parameters per wrap
        hit = np.abs(t @ bt.T - rhs).max(1) < tol
        ns = null_space(bt)
        if ns.size and np.abs(b[target] @ ns).max() > 1e-6:
            if hit.any():
                return None  # typed coordinates reachable and the target still free
            continue
        vals.extend(float((p0[target] + b[target] @ tt) % 1.0) for tt in t[hit])
    if not vals:
        return np.zeros(0)
    v = np.round(np.array(vals), 4) % 1.0
    return np.unique(v)


#: Probe values for free coordinates in the look-ahead: odd sixteenths (0.0625 from every multiple
#: of 1/8, >= 0.02 from 1/6, 1/3 ...) in a spread-out order, then four 24ths. A probe near a
#: special value collapses the orbit, meets its own symmetry copy, or blocks the special point
#: another element needs.
_PROBE = np.array([9, 5, 13, 3, 11, 7, 15, 1], dtype=float) / 16
_PROBE = np.concatenate([_PROBE, np.array([7, 17, 1, 23]) / 24])


def crystal_system(number: int) -> str:
    for hi, name in ((2, "triclinic"), (15, "monoclinic"), (74, "orthorhombic"), (142, "tetragonal"),
                     (167, "trigonal"), (194, "hexagonal"), (230, "cubic")):
        if number <= hi:
            return name
    raise ValueError(number)


def _monotone(check: Callable[[float], bool]) -> Callable[[float], bool]:
    """Memoise a check that is monotone in its value (a longer last cell length leaves more room):
    once ``x`` passes, every larger value passes; once it fails, every smaller one fails."""
    lowest_pass, highest_fail = [math.inf], [-math.inf]

    def memo(x: float) -> bool:
        if x >= lowest_pass[0]:
            return True
        if x <= highest_fail[0]:
            return False
        ok = bool(check(x))
        if ok:
            lowest_pass[0] = x
        else:
            highest_fail[0] = x
        return ok

    return memo


def _sin_at_least(s: float) -> tuple[float, float]:
    """Angles (degrees, within 30..150) whose sine is at least ``s``."""
    s = min(1.0, max(0.0, s))
    t = math.degrees(math.asin(s))
    return max(30.0, t), min(150.0, 180.0 - t)


def _gamma_span(al: float, be: float, s_min: float) -> tuple[float, float]:
    """Triclinic gamma (degrees) for which V / (abc) = sqrt(1 - ca² - cb² - cg² + 2 ca cb cg) >= s_min.

    The expression is a downward parabola in cg = cos(gamma) with its top sin(al) sin(be) at
    cg = ca cb, so the admissible gammas form one interval.
    """
    ca, cb = math.cos(math.radians(al)), math.cos(math.radians(be))
    disc = (1 - ca * ca) * (1 - cb * cb) - s_min * s_min
    if disc < 0:
        return 90.0, 90.0  # no gamma reaches s_min (cannot happen after _sin_at_least spans)
    r = math.sqrt(disc)
    return math.degrees(math.acos(min(1.0, ca * cb + r))), math.degrees(math.acos(max(-1.0, ca * cb - r)))


@dataclass(frozen=True)
class LatticeWindow:
    """Bounds on the lattice numbers from the physical rules of :class:`Conditions`.

    * every cell length at least ``2 f max(r_cov)``: each atom keeps its own translation copy at
      the contact distance (``f`` the contact ratio, 0 when off);
    * cell volume within ``[vlo, vhi]``: the volume window on the composition-based prediction
      (:func:`llamat_cif.physics.volume_bounds`), spread over the lattice fields in the order they
      are written so that every prefix keeps an admissible completion (lengths <= 60 Å).
    """

    len_lo: float = 1.0
    vlo: float = 0.0
    vhi: float = math.inf
    hexf: float = 1.0  # area factor of the ab face (sin 120° on hexagonal axes)
    vhi0: float = math.inf  # the top before any widening

    LEN_HI = 60.0

    @classmethod
    def for_counts(cls, counts: dict[str, int], cond: Conditions, *, hexagonal_axes: bool) -> LatticeWindow:
        len_lo, vlo, vhi = 1.0, 0.0, math.inf
        if cond.contact_ratio:
            from llamat_cif.physics import covalent_radius

            len_lo = max(1.0, 2 * cond.contact_ratio * max(covalent_radius(e) for e in counts))
        if cond.volume_window:
            from llamat_cif.physics import volume_bounds

            vlo, vhi = volume_bounds(counts, cond.volume_window)
        return cls(len_lo, vlo, vhi, math.sqrt(3) / 2 if hexagonal_axes else 1.0)

    def cubic(self) -> tuple[float, float]:
        return self.vlo ** (1 / 3), self.vhi ** (1 / 3)

    def first(self, n_free: int) -> tuple[float, float]:
        """The first length when ``n_free`` lengths (2: a = b, c; 3: a, b, c) remain."""
        if n_free == 2:  # V = a² c hexf
            return math.sqrt(self.vlo / (self.LEN_HI * self.hexf)), math.sqrt(self.vhi / (self.len_lo * self.hexf))
        return self.vlo / self.LEN_HI**2, self.vhi / self.len_lo**2

    def second(self, a: float) -> tuple[float, float]:
        return self.vlo / (a * self.LEN_HI), self.vhi / (a * self.len_lo)

    def last(self, area: float) -> tuple[float, float]:
        """The last length over a face of ``area`` = a b (angle factor 1: the angles that follow
        then only need sin >= vlo / (abc), one interval each)."""
        return self.vlo / (area * self.hexf), self.vhi / (area * self.hexf)

    def _len(self, x: float) -> float:
        return min(self.LEN_HI, max(self.len_lo, x))

    def roomiest(self, area: float) -> float:
        """The largest admissible last length over a face of ``area``."""
        return self._len(self.vhi / (area * self.hexf))

    def roomiest_pair(self, a: float) -> tuple[float, float]:
        """b = c for the largest admissible volume after ``a`` (the most even shape)."""
        bc = self._len(math.sqrt(self.vhi / a)) if math.isfinite(self.vhi) else self.LEN_HI
        return bc, self._len(self.vhi / (a * bc)) if math.isfinite(self.vhi) else self.LEN_HI

    def widened(self, factor: float = 1.25, limit: float = 5.0) -> LatticeWindow:
        """The same window with its top raised by ``factor``; open once the top passes ``limit``
        times the window's original top."""
        vhi = self.vhi * factor
        top0 = self.vhi0 if math.isfinite(self.vhi0) else self.vhi
        return replace(self, vhi=vhi if vhi < limit * top0 else math.inf, vhi0=top0)

    def fits_somewhere(self, system: str, rhombo_hex: bool, room: Callable[..., bool]) -> bool:
        """Does the composition fit one of a few roomiest cells of the window (the lattice fields'
        own checks then find the rest)?"""
        if system == "cubic":
            a = self.clip(self.cubic())[1]
            return room(a, a, a)
        if system in ("tetragonal", "trigonal", "hexagonal") or rhombo_hex:
            lo, hi = self.clip(self.first(2))
            ang = 120.0 if self.hexf != 1.0 else 90.0
            return any(room(a, a, self.roomiest(a * a), 90.0, 90.0, ang) for a in np.linspace(lo, hi, 7))
        lo, hi = self.clip(self.first(3))
        return any(room(a, *self.roomiest_pair(a)) for a in np.geomspace(lo, hi, 7))

    def clip(self, span: tuple[float, float], stats: Stats | None = None) -> tuple[float, float]:
        """A length span within [len_lo, 60] on the 3-decimal grid (the full range, counted as a
        fallback, if nothing is left)."""
        lo = math.ceil(max(self.len_lo, span[0]) * 1000 - 1e-6) / 1000
        hi = math.floor(min(self.LEN_HI, span[1]) * 1000 + 1e-6) / 1000
        if lo > hi:
            if stats is not None:
                stats.fallbacks += 1
            return math.ceil(self.len_lo * 1000) / 1000, self.LEN_HI
        return lo, hi

    @staticmethod
    def angle_clip(span: tuple[float, float], stats: Stats | None = None) -> tuple[float, float]:
        """An angle span within 30..150 on the 2-decimal grid, kept 0.01° inside its ends."""
        lo = 30.0 if span[0] <= 30.0 else math.ceil(span[0] * 100 + 1) / 100
        hi = 150.0 if span[1] >= 150.0 else math.floor(span[1] * 100 - 1) / 100
        if lo > hi:
            if stats is not None:
                stats.fallbacks += 1
            return 30.0, 150.0
        return lo, hi


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
    from llamat_cif.placement import Placement, min_lines

    system = crystal_system(sg)
    rhombo_hex = symbol.startswith("R")
    hexagonal_axes = system in ("trigonal", "hexagonal") or rhombo_hex
    win = LatticeWindow.for_counts(counts, cond, hexagonal_axes=hexagonal_axes)
    steer_v = None  # the typical cell volumes the last length is steered into (Å³)
    if cond.volume_steer:
        from llamat_cif.physics import volume_bounds

        steer_v = volume_bounds(counts, cond.volume_steer)

    def room(a, b, c, al=90.0, be=90.0, ga=90.0) -> bool:
        """The whole composition still fits this lattice (checked on the last lattice number)."""
        return Placement(sg, _lattice_matrix(a, b, c, al, be, ga), cond.min_distance,
                         contact_ratio=cond.contact_ratio).fits(counts, lines=cond.max_lines)

    def length(span: tuple[float, float], accept=None, monotone: bool = True, volume=None):
        """A cell length; ``accept`` is monotone in the last length (checked on each interval's
        top), else probed on 11 points of each digit's interval. ``volume(x)``: the cell volume
        this (last) length gives, for steering toward the typical volume window."""
        lo, hi = win.clip(span, stats)
        if accept is None:
            return Num(lo, hi, 3, ("\n",), max_int_digits=2)
        acc = _monotone(accept) if monotone else accept
        strict = None
        if volume is not None and steer_v is not None:
            strict = lambda x: steer_v[0] <= volume(x) <= steer_v[1] and acc(x)  # noqa: E731
        return Num(lo, hi, 3, ("\n",), max_int_digits=2, accept=acc, probe="hi" if monotone else True,
                   strict_accept=strict, strict_probe=True)

    ang = 120.0 if hexagonal_axes else 90.0
    # The header was chosen before the lattice: a space group whose special positions push atoms
    # apart can need more volume than the window's top. Widen the top (counted) rather than leave
    # the model without a completion.
    while math.isfinite(win.vhi) and not win.fits_somewhere(system, rhombo_hex, room):
        stats.window_widened += 1
        win = win.widened()
    if system == "cubic":
        a, _ = yield length(win.cubic(), lambda x: room(x, x, x), volume=lambda x: x**3)
        b = c = a
        yield Lit(f"_cell_length_b {a:.3f}\n_cell_length_c {a:.3f}\n")
    else:
        # earlier lengths: the composition must fit the roomiest cell the later lengths allow
        if system in ("tetragonal", "trigonal", "hexagonal") or rhombo_hex:
            a, _ = yield length(win.first(2), lambda x: room(x, x, win.roomiest(x * x), 90.0, 90.0, ang),
                                monotone=False)
            b = a
            yield Lit(f"_cell_length_b {a:.3f}\n_cell_length_c ")
        else:
            a, _ = yield length(win.first(3), lambda x: room(x, *win.roomiest_pair(x)), monotone=False)
            yield Lit("_cell_length_b ")
            b, _ = yield length(win.second(a), lambda x, a=a: room(a, x, win.roomiest(a * x)), monotone=False)
            yield Lit("_cell_length_c ")
        if system in ("triclinic", "monoclinic"):
            # right angles are the roomiest: the angles that follow are checked exactly
            c, _ = yield length(win.last(a * b), lambda x, a=a, b=b: room(a, b, x), volume=lambda x: a * b * x)
        elif hexagonal_axes:
            c, _ = yield length(win.last(a * a), lambda x, a=a: room(a, a, x, 90.0, 90.0, 120.0),
                                volume=lambda x: a * a * x * win.hexf)
        else:
            c, _ = yield length(win.last(a * b), lambda x, a=a, b=b: room(a, b, x), volume=lambda x: a * b * x)
    if hexagonal_axes:
        al, be, ga = 90.0, 90.0, 120.0
        yield Lit("_cell_angle_alpha 90.00\n_cell_angle_beta 90.00\n_cell_angle_gamma 120.00\n")
    elif system == "triclinic":
        s_min = max(0.2, win.vlo / (a * b * c))  # 0.2: _cell_shape_ok's flatness limit
        yield Lit("_cell_angle_alpha ")
        al, _ = yield Num(*win.angle_clip(_sin_at_least(s_min), stats), 2, ("\n",))
        yield Lit("_cell_angle_beta ")
        be, _ = yield Num(*win.angle_clip(_sin_at_least(s_min / math.sin(math.radians(al))), stats), 2, ("\n",))
        yield Lit("_cell_angle_gamma ")
        ga, _ = yield Num(*win.angle_clip(_gamma_span(al, be, s_min), stats), 2, ("\n",),
                          accept=lambda x, al=al, be=be: _cell_shape_ok(al, be, x) and room(a, b, c, al, be, x))
    elif system == "monoclinic":
        al, ga = 90.0, 90.0
        yield Lit("_cell_angle_alpha 90.00\n_cell_angle_beta ")
        be, _ = yield Num(*win.angle_clip(_sin_at_least(win.vlo / (a * b * c)), stats), 2, ("\n",),
                          accept=lambda x: room(a, b, c, 90.0, x, 90.0))
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

    # Sites: every offered element, multiplicity and coordinate keeps a completion of the whole
    # composition in reach (llamat_cif.placement); a fallback is counted where none is found.
    place = Placement(sg, matrix, cond.min_distance, contact_ratio=cond.contact_ratio)
    steer = cond.steer_ratio if cond.steer_ratio > (cond.contact_ratio or 0.0) else None
    remaining = dict(counts)
    i = 0
    while any(remaining.values()):

        def rest_after(el: str, m: int) -> dict[str, int]:
            return {e: r - (m if e == el else 0) for e, r in remaining.items()}

        lines_left = cond.max_lines - i - 1  # after this one

        def line_ok(rest: dict[str, int], lines_left=lines_left) -> bool:
            return min_lines(sg, tuple(sorted((c for c in rest.values() if c > 0), reverse=True))) <= lines_left

        checked: dict[tuple[str, int], bool] = {}

        def m_ok(e: str, m: int, lines_left=lines_left, line_ok=line_ok, checked=checked) -> bool:
            """A site of element e with multiplicity m can go somewhere and leave a completion."""
            if (e, m) not in checked:
                checked[e, m] = (m <= remaining[e] and line_ok(rest_after(e, m))
                                 and place.multiplicity_ok(m, rest_after(e, m), lines_left, element=e))
            return checked[e, m]

        # an element is offered when one multiplicity works (largest first: the general position
        # is the likeliest); the full set is worked out for the chosen element only
        live = [e for e, r in remaining.items() if r > 0]
        options = {v.element_id[e]: e for e in live if any(m_ok(e, m) for m in reversed(place.sizes))}
        if not options:
            stats.fallbacks += 1
            options = {v.element_id[e]: e for e in live}
        el = yield Choice(options)
        yield Lit(f" {el}{i} ")
        r = remaining[el]
        mults = (frozenset(m for m in place.sizes if m_ok(el, m))
                 or frozenset(m for m in place.sizes if m <= r) or frozenset({min(place.sizes)}))
        m, _ = yield Num(1, max(mults), 0, (" ",), allowed=mults)
        m = int(m)
        rest = rest_after(el, m)
        subs = wyckoff_subspaces(sg, m)

        # Points (as they would be typed) known to be admissible sites with a completion: images of
        # a witness site, and every point a coordinate check accepted. They are offered to the
        # later coordinates' checks first, so a narrow gap found once is not lost between the
        # probe grids of different fields.
        found: list[np.ndarray] = []
        witness = place.site_fitting(place.candidates(m), m, rest, lines=lines_left, element=el)
        if witness is not None:
            found.extend(np.round(place.orbit_of(witness), 4) % 1.0)

        def matching(*typed: float, found=found) -> np.ndarray:
            pts = np.array(found).reshape(-1, 3)
            for j, val in enumerate(typed):
                pts = pts[np.abs(pts[:, j] - round(val, 4)) < 0.6e-4]
            return pts

        def fitting(pts: np.ndarray, m=m, rest=rest, n=lines_left, found=found, el=el, ratio=None) -> bool:
            p = place.site_fitting(pts, m, rest, lines=n, element=el, site_ratio=ratio)
            if p is not None and ratio is None:
                found.append(np.round(p, 4) % 1.0)
            return p is not None


        def completions(xv: float, yv: float | None = None, m=m) -> np.ndarray:
            """Points of orbit size m that start with the typed coordinates: known ones first, then
            the probe grid."""
            xv = round(xv, 4)
            ys_ = solve_values(sg, m, ((0, xv),), 1) if yv is None else np.array([round(yv, 4)])
            ys_ = _PROBE if ys_ is None else ys_
            pts = [matching(xv) if yv is None else matching(xv, yv)]
            for yy in ys_:
                zs_ = solve_values(sg, m, ((0, xv), (1, round(float(yy), 4))), 2)
                for zz in (_PROBE if zs_ is None else zs_):
                    pts.append(np.array([[xv, float(yy), float(zz)]]))
            return np.vstack(pts)

        xs = solve_values(sg, m, (), 0) if subs else None
        x, _ = yield Num(0.0, 0.9999, 4, (" ",), max_int_digits=1, values=xs,
                         accept=lambda xv: fitting(completions(xv)), hints=lambda: matching()[:, 0],
                         strict_accept=(lambda xv: fitting(completions(xv), ratio=steer)) if steer else None)
        ys = solve_values(sg, m, ((0, round(x, 4)),), 1) if subs else None
        y, _ = yield Num(0.0, 0.9999, 4, (" ",), max_int_digits=1, values=ys if ys is None or len(ys) else None,
                         accept=lambda yv, x=x: fitting(completions(x, yv)), hints=lambda x=x: matching(x)[:, 1],
                         strict_accept=(lambda yv, x=x: fitting(completions(x, yv), ratio=steer)) if steer else None)
        zs = solve_values(sg, m, ((0, round(x, 4)), (1, round(y, 4))), 2) if subs else None
        zs = zs if zs is None or len(zs) else None
        zv, _ = yield Num(0.0, 0.9999, 4, (" ",), max_int_digits=1, values=zs,
                          accept=lambda zv, x=x, y=y, m=m, rest=rest, n=lines_left, el=el:
                          place.site_fits(np.array([x, y, zv]), m, rest, n, element=el),
                          strict_accept=(lambda zv, x=x, y=y, m=m, rest=rest, n=lines_left, el=el:
                                         place.site_fits(np.array([x, y, zv]), m, rest, n, element=el,
                                                         site_ratio=steer)) if steer else None,
                          hints=lambda x=x, y=y: matching(x, y)[:, 2])
        yield Lit("1\n")
        place.place(np.array([x, y, zv]), el)
        remaining[el] = max(0, r - m)
        i += 1
    stats.optimistic += place.optimistic
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
    from llamat_cif.physics import covalent_radius

    remaining = dict(counts) if counts else None
    placed = np.zeros((0, 3))
    radii = np.zeros(0)
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
        placed_now, radii_now = placed, radii
        r_el = covalent_radius(el) if cond.contact_ratio else 0.0

        def accept(zv: float, x=x, y=y, placed_now=placed_now, radii_now=radii_now, r_el=r_el) -> bool:
            if cond.min_distance is None and not cond.contact_ratio:
                return True
            d = pair_distances(np.array([[x, y, zv]]), placed_now, matrix)[0]
            thr = np.maximum(cond.min_distance or 0.0, cond.contact_ratio * (r_el + radii_now))
            return bool((d >= thr).all())

        zv, _ = yield Num(0.0, 0.99, 2, ("\n",), max_int_digits=1, accept=accept)
        placed = np.vstack([placed, [x, y, zv]])
        radii = np.append(radii, r_el)
        if remaining is not None:
            remaining[el] -= 1
        n += 1
    yield End()


GRAMMARS = {"cif": cif_grammar, "llamat": llamat_grammar}

