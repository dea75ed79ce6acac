"""The decoder engine: a grammar says what may come next, a :class:`Decoder` turns it into token ids.

A document grammar (:mod:`llamat_cif.sampling.grammars`) is a Python generator that yields *field
specs* and receives the value the model wrote for each one. A per-sequence :class:`Decoder` turns the
current spec into the set of token ids allowed next, and advances when a token is chosen.

A spec's ``accept`` check can be expensive: :meth:`Decoder.allowed` gives the cheap syntactic set
and :meth:`Decoder.check` the look-ahead verdict for one token, so a sampler can check only the
tokens it actually draws (see :class:`llamat_cif.sampling.processor.GrammarLogitsProcessor`).

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

from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, fields, replace
from functools import lru_cache

import numpy as np


@dataclass
class Lit:
    """Fixed text, forced token by token."""

    text: str


@dataclass
class Choice:
    """One token out of a set; the grammar receives the chosen value."""

    options: dict[int, str]  # token id -> value


@dataclass
class Num:
    """A non-negative decimal number in ``[lo, hi]`` written digit by digit (see the module docstring)."""

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
    # fractional fields without ``values``: values some Wyckoff subspaces pin the coordinate to
    # while others leave it free; tried after the probe points, so that a line such as y = x / 2
    # lying between two probes is not missed (and the probes' verdicts stay as they were)
    pinned: np.ndarray | None = None
    # stricter checks the sampler prefers, in order, when some token passes one (steering:
    # coordinates keep a wider contact margin when the model's own choices allow one): a callable,
    # or a tuple of them from the most to the least preferred (tiers tried before ``accept`` alone)
    strict_accept: Callable[[float], bool] | tuple[Callable[[float], bool], ...] | None = None
    strict_probe: bool | str | None = None  # how strict_accept is probed (None: as ``probe``)


class Check:
    """An ``accept`` callback that also answers for many values at once (a digit interval's probe
    points, a field's finite set of positions).

    ``check(v)`` is ``one(v)``; ``many(values)`` yields ``one(v)`` for each value in turn, lazily,
    with the same calls and side effects, but may prepare what all of them need in one array
    operation first (the look-ahead checks every value's candidate sites together instead of one
    small operation per value). :meth:`any_of` asks the first value alone (it usually decides),
    then the rest; :meth:`each` answers for every value."""

    __slots__ = ("one", "many")

    def __init__(self, one: Callable[[float], bool], many: Callable[[np.ndarray], Iterator[bool]]) -> None:
        self.one, self.many = one, many

    def __call__(self, v: float) -> bool:
        return self.one(v)

    def any_of(self, values: np.ndarray) -> bool:
        """``any(one(v) for v in values)``."""
        if not len(values):
            return False
        return bool(self.one(float(values[0]))) or (len(values) > 1 and any(self.many(values[1:])))

    def each(self, values: np.ndarray) -> np.ndarray:
        """``[one(v) for v in values]`` as a boolean mask."""
        return np.fromiter(self.many(values), dtype=bool, count=len(values)) if len(values) else np.zeros(0, bool)


def _keep(check: Callable[[float], bool], values: np.ndarray) -> np.ndarray:
    """The values ``check`` accepts, in order."""
    if isinstance(check, Check):
        return np.asarray(values)[check.each(values)]
    return np.array([v for v in values if check(float(v))])


def steer_tiers(spec) -> tuple:
    """The steering checks of a field, most preferred first (empty when it has none)."""
    strict = getattr(spec, "strict_accept", None)
    if strict is None:
        return ()
    return tuple(strict) if isinstance(strict, tuple) else (strict,)


@dataclass
class End:
    """End of document (EOS)."""


Spec = Lit | Choice | Num | End
Grammar = Generator[Spec, object, None]


@dataclass
class Stats:
    """Counts of constraint interventions, summed over a run."""

    fallbacks: int = 0  # the constraint found no admissible continuation and let the model choose
    distance_vetoes: int = 0  # tokens refused by the look-ahead (distances, orbits, room left)
    optimistic: int = 0  # look-ahead searches that ran out of budget and answered "yes"
    window_widened: int = 0  # volume windows widened because the header's group needed more room
    redrawn: int = 0  # documents drawn again (new seed) because their constraint hit a dead end
    dead_ends_kept: int = 0  # documents kept with a fallback after their last redraw
    below_floor_redrawn: int = 0  # documents drawn again because a pair sat below the steering floor
    below_floor_kept: int = 0  # documents kept with such a pair after their last redraw

    def add(self, other: Stats) -> None:
        """Add ``other``'s counts to these."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


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
            ok = _keep(spec.accept, spec.values)
            self.stats.distance_vetoes += len(spec.values) - len(ok)
            for strict in steer_tiers(spec) if len(ok) else ():  # steering: the widest margin that exists
                kept = _keep(strict, ok)
                if len(kept):
                    ok = kept
                    break
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
        self._exhausted: set[int] = set()  # steering tiers no token of this field passed (see live_tiers)
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

    def steer_tiers(self) -> int:
        """How many stricter, preferred checks the current field has (0: none; see :meth:`check`)."""
        return len(steer_tiers(self.spec)) if self.needs_check() else 0

    def live_tiers(self) -> list[int]:
        """The steering tiers still worth asking in this field, most preferred first: a tier that no
        allowed token passed at an earlier digit of the field (:meth:`exhaust_tier`) is skipped for
        its later digits. Each later digit narrows the interval to one of the digits that failed,
        whose finer probe points then almost never pass (measured: 3 of 2,744 such checks, 64
        unconditional samples at the default setting); asking again cost ~12 % of sampling time."""
        return [k for k in range(self.steer_tiers()) if k not in self._exhausted]

    def exhaust_tier(self, k: int) -> None:
        """Record that no allowed token of the current digit passed steering tier ``k``."""
        self._exhausted.add(k)

    def check(self, tid: int, *, strict: bool | int = False) -> bool:
        """The look-ahead veto: does some completion of the field after ``tid`` pass ``accept``
        (with ``strict``: the field's preferred ``strict_accept``; ``True`` is its first tier, an
        integer ``k`` its ``k``-th)?

        Fractional digits test their whole interval (the last digit exactly, earlier ones on
        probe points); an integer field tests its value at the end token. Memoised per position.
        """
        s = self.spec
        if not self.needs_check():
            return True
        if strict is not False:
            tiers = steer_tiers(s)
            k = 0 if strict is True else int(strict)
            if k >= len(tiers):
                return self.check(tid)
            key = ("strict", k, tid)
            if key not in self._checked:
                probe = s.probe if s.strict_probe is None else s.strict_probe
                self._checked[key] = self._verdict(replace(s, accept=tiers[k], probe=probe), tid)
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
        if s.pinned is not None and s.values is None:
            pts = np.concatenate([pts, s.pinned[(s.pinned >= lo - tol) & (s.pinned <= hi + tol)]])
        pts = np.round(pts, s.decimals)
        _, first = np.unique(pts, return_index=True)  # each value once, in the order given
        pts = pts[np.sort(first)]
        if isinstance(s.accept, Check):
            return s.accept.any_of(pts)
        return any(s.accept(float(p)) for p in pts)

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
