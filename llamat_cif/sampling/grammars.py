"""The two document grammars: the sampler may only write text that is a crystal.

* :func:`cif_grammar` — the canonical CIF of :func:`llamat_cif.cif.to_text` (format constants
  taken from :mod:`llamat_cif.cif`), conditioning header first;
* :func:`llamat_grammar` — the P1 LLaMat/Gruver text.

Both follow the canonical texts of :mod:`llamat_cif.cif` exactly, so every finished sequence parses,
and they hold the composition to the requested (or self-declared) formula, the lattice to the space
group's crystal system, the site multiplicities to the group's orbit sizes, and — once the lattice is
known — refuse a site that would sit closer than ``min_distance`` to an atom already placed
(periodic images and, in the CIF grammar, symmetry copies included). The CIF grammar also looks
ahead (:mod:`llamat_cif.sampling.placement`): it only offers a choice from which the whole
composition can still be placed, so a finished sequence cannot end up with overlapping sites or a
composition other than the one it declared.
"""

from __future__ import annotations

import math

import numpy as np

from llamat_cif.cif import (
    ANGLE_DECIMALS,
    CIF_HEADER_TAGS,
    CIF_SITE_TAGS,
    COORD_DECIMALS,
    LENGTH_DECIMALS,
    VOLUME_DECIMALS,
    written_volume,
)
from llamat_cif.sampling.engine import Check, Choice, End, Lit, Num, Stats, Vocab
from llamat_cif.sampling.fields import Conditions, header_fields
from llamat_cif.sampling.grids import completion_grids
from llamat_cif.sampling.lattice import (
    LatticeWindow,
    cell_shape_ok,
    gamma_span,
    lattice_matrix,
    monotone_memo,
    pair_distances,
    sin_at_least,
)
from llamat_cif.sampling.placement import Placement
from llamat_cif.symmetry import (
    crystal_system,
    min_lines,
    solve_values,
    wyckoff_subspaces,
)

# The canonical CIF's format (:mod:`llamat_cif.cif`): its tags in their fixed order, fixed angles
# written with the angle decimals ("90.00"), numbers with the decimals of their kind.
(_HM, _IT_NUMBER, _LEN_A, _LEN_B, _LEN_C, _ALPHA, _BETA, _GAMMA, _FORMULA_SUM, _VOLUME, _Z) = CIF_HEADER_TAGS
_RIGHT = f"{90:.{ANGLE_DECIMALS}f}"
_HEX = f"{120:.{ANGLE_DECIMALS}f}"
_COORD_HI = round(1 - 10.0**-COORD_DECIMALS, COORD_DECIMALS)  # the largest coordinate below 1

class _Known:
    """Points known to be admissible sites of the site being written, as typed (rounded to the
    coordinate decimals, wrapped into [0, 1)), each once, in the order found."""

    def __init__(self) -> None:
        self._rows: list[np.ndarray] = []
        self._seen: set[bytes] = set()
        self._array: np.ndarray | None = None

    def add(self, pts: np.ndarray) -> None:
        for p in np.round(np.asarray(pts, dtype=float).reshape(-1, 3), COORD_DECIMALS) % 1.0:
            key = p.tobytes()
            if key not in self._seen:
                self._seen.add(key)
                self._rows.append(p)
                self._array = None

    def points(self) -> np.ndarray:
        """The known points, ``(n, 3)`` (read-only)."""
        if self._array is None:
            self._array = np.array(self._rows).reshape(-1, 3)
            self._array.flags.writeable = False
        return self._array


def _pinned(sg: int, m: int, typed: tuple, target: int, values) -> np.ndarray | None:
    """:attr:`Num.pinned` of a coordinate field whose admissible ``values`` are not a finite set."""
    return solve_values(sg, m, typed, target, pinned=True) if values is None or not len(values) else None


def cif_grammar(v: Vocab, cond: Conditions, stats: Stats, *, header: bool = True):
    """The canonical CIF of :func:`llamat_cif.cif.to_text`, conditioning header first."""
    from pymatgen.core import Composition

    if not header:
        raise ValueError("the CIF grammar needs the conditioning header (the formula comes first)")
    counts, sg = yield from header_fields(v, cond, want_formula=True, want_sg=True, stats=stats)
    comp = Composition(counts)
    yield Lit(f"data_{comp.reduced_formula}\n{_HM} ")
    if sg:
        symbol = v.sg_symbols[sg - 1]
        # the symbol's own token, as the tokenizer writes it after the tag in every training document
        # (encoded alone, the text would split into characters the model never saw there)
        yield Choice({v.sg_id[symbol]: symbol}) if symbol in v.sg_id else Lit(symbol)
    else:
        symbol = yield Choice({i: s for s, i in v.sg_id.items()})
        sg = v.sg_symbols.index(symbol) + 1
    yield Lit(f"\n{_IT_NUMBER} {sg}\n{_LEN_A} ")
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
        return Placement(sg, lattice_matrix(a, b, c, al, be, ga), cond.min_distance,
                         contact_ratio=cond.contact_ratio).fits(counts, lines=cond.max_lines)

    def length(span: tuple[float, float], accept=None, monotone: bool = True, volume=None):
        """A cell length; ``accept`` is monotone in the last length (checked on each interval's
        top), else probed on 11 points of each digit's interval. ``volume(x)``: the cell volume
        this (last) length gives, for steering toward the typical volume window."""
        lo, hi = win.clip(span, stats)
        if accept is None:
            return Num(lo, hi, LENGTH_DECIMALS, ("\n",), max_int_digits=2)
        acc = monotone_memo(accept) if monotone else accept
        strict = None
        if volume is not None and steer_v is not None:
            strict = lambda x: steer_v[0] <= volume(x) <= steer_v[1] and acc(x)  # noqa: E731
        return Num(lo, hi, LENGTH_DECIMALS, ("\n",), max_int_digits=2, accept=acc, probe="hi" if monotone else True,
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
        yield Lit(f"{_LEN_B} {a:.{LENGTH_DECIMALS}f}\n{_LEN_C} {a:.{LENGTH_DECIMALS}f}\n")
    else:
        # earlier lengths: the composition must fit the roomiest cell the later lengths allow
        if system in ("tetragonal", "trigonal", "hexagonal") or rhombo_hex:
            a, _ = yield length(win.first(2), lambda x: room(x, x, win.roomiest(x * x), 90.0, 90.0, ang),
                                monotone=False)
            b = a
            yield Lit(f"{_LEN_B} {a:.{LENGTH_DECIMALS}f}\n{_LEN_C} ")
        else:
            a, _ = yield length(win.first(3), lambda x: room(x, *win.roomiest_pair(x)), monotone=False)
            yield Lit(f"{_LEN_B} ")
            b, _ = yield length(win.second(a), lambda x, a=a: room(a, x, win.roomiest(a * x)), monotone=False)
            yield Lit(f"{_LEN_C} ")
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
        yield Lit(f"{_ALPHA} {_RIGHT}\n{_BETA} {_RIGHT}\n{_GAMMA} {_HEX}\n")
    elif system == "triclinic":
        s_min = max(0.2, win.vlo / (a * b * c))  # 0.2: cell_shape_ok's flatness limit
        yield Lit(f"{_ALPHA} ")
        al, _ = yield Num(*win.angle_clip(sin_at_least(s_min), stats), ANGLE_DECIMALS, ("\n",))
        yield Lit(f"{_BETA} ")
        be, _ = yield Num(*win.angle_clip(sin_at_least(s_min / math.sin(math.radians(al))), stats), ANGLE_DECIMALS, ("\n",))
        yield Lit(f"{_GAMMA} ")
        ga, _ = yield Num(*win.angle_clip(gamma_span(al, be, s_min), stats), ANGLE_DECIMALS, ("\n",),
                          accept=lambda x, al=al, be=be: cell_shape_ok(al, be, x) and room(a, b, c, al, be, x))
    elif system == "monoclinic":
        al, ga = 90.0, 90.0
        yield Lit(f"{_ALPHA} {_RIGHT}\n{_BETA} ")
        be, _ = yield Num(*win.angle_clip(sin_at_least(win.vlo / (a * b * c)), stats), ANGLE_DECIMALS, ("\n",),
                          accept=lambda x: room(a, b, c, 90.0, x, 90.0))
        yield Lit(f"{_GAMMA} {_RIGHT}\n")
    else:
        al = be = ga = 90.0
        yield Lit(f"{_ALPHA} {_RIGHT}\n{_BETA} {_RIGHT}\n{_GAMMA} {_RIGHT}\n")
    matrix = lattice_matrix(a, b, c, al, be, ga)
    volume = written_volume(a, b, c, al, be, ga)  # the canonical CIF's rule: the cell as written
    _, z = comp.get_reduced_composition_and_factor()
    sum_formula = " ".join(f"{el}{n}" for el, n in counts.items())
    yield Lit(f"{_FORMULA_SUM} '{sum_formula}'\n{_VOLUME} {volume:.{VOLUME_DECIMALS}f}\n"
              f"{_Z} {int(round(z))}\nloop_\n" + "\n".join(CIF_SITE_TAGS) + "\n")

    # Sites: every offered element, multiplicity and coordinate keeps a completion of the whole
    # composition in reach (llamat_cif.sampling.placement); a fallback is counted where none is found.
    place = Placement(sg, matrix, cond.min_distance, contact_ratio=cond.contact_ratio)
    # steering tiers, widest margin first: the calibrated steer ratio, then the floor (both only
    # above the hard rule); a coordinate keeps the widest one some token allows
    steers = tuple(sorted({r for r in (cond.steer_ratio, cond.steer_floor) if r > (cond.contact_ratio or 0.0)},
                          reverse=True))
    # every steering tier also asks the look-ahead for a completion that keeps the floor (the
    # short-contact line the benchmark reports), so that a site chosen now does not force a later
    # one below it
    floor = cond.steer_floor if cond.steer_floor in steers else None
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
        # a witness site, and every point a coordinate check accepted (by the hard rule or a
        # steering tier, which implies it). They are offered to the
        # later coordinates' checks first, so a narrow gap found once is not lost between the
        # probe grids of different fields.
        found = _Known()
        witness = place.site_fitting(place.candidates(m), m, rest, lines=lines_left, element=el)
        if witness is not None:
            found.add(place.orbit_of(witness))

        def matching(*typed: float, found=found) -> np.ndarray:
            pts = found.points()
            for j, val in enumerate(typed):
                pts = pts[np.abs(pts[:, j] - round(val, COORD_DECIMALS)) < 0.6e-4]
            return pts

        def fitting(groups, m=m, rest=rest, n=lines_left, found=found, el=el, ratio=None, same=None):
            """Per group of candidate points, lazily: does it hold an admissible site with a
            completion (Placement.site_fitting_each: the groups' site checks made at once)?"""
            for p in place.site_fitting_each(groups, m, rest, lines=n, element=el, site_ratio=ratio,
                                             rest_ratio=floor if ratio is not None else None, same_min=same):
                if p is not None:  # a point that keeps a steering tier keeps the hard rule too
                    found.add(p[None, :])
                yield p is not None

        def completions(vals, x=None, m=m) -> list[tuple[np.ndarray, np.ndarray]]:
            """Per typed value of x (or, given ``x``, of y): the points of orbit size m that start with
            the typed coordinates, known ones first, then the probe grid (:mod:`~llamat_cif.sampling.grids`),
            tried in this order, each chunked alone. (A point found for one value cannot match
            another: values differ by >= 1e-4, so the known points of all values can be read at once.)"""
            vals = [round(float(v), COORD_DECIMALS) for v in vals]
            x = None if x is None else round(x, COORD_DECIMALS)
            pairs = [(v, None) if x is None else (x, v) for v in vals]
            return [(matching(*(p[:1] if x is None else p)), g)
                    for p, g in zip(pairs, completion_grids(sg, m, pairs), strict=True)]

        def coord_check(x=None, ratio=None, same=None, fitting=fitting, completions=completions) -> Check:
            """The look-ahead of the x field (or, given ``x``, of the y field): a value passes when
            one of its completions is an admissible site with a completion of the composition."""
            return Check(lambda v: next(fitting(completions([v], x), ratio=ratio, same=same)),
                         lambda vals: fitting(completions(vals, x), ratio=ratio, same=same))

        def z_check(x, y, ratio=None, same=None, m=m, rest=rest, n=lines_left, el=el) -> Check:
            """The look-ahead of the z field: (x, y, z) is an admissible site with a completion
            (several values: one group of one point each, one try each)."""
            kw = dict(element=el, site_ratio=ratio, rest_ratio=floor if ratio is not None else None, same_min=same)
            return Check(lambda v: place.site_fits(np.array([x, y, v]), m, rest, n, **kw),
                         lambda vals: (p is not None for p in place.site_fitting_each(
                             [np.array([x, y, float(v)]) for v in vals], m, rest, 1, n, **kw)))

        # steering tiers of this site, widest first: (contact ratio, same-element distance); an
        # anion first asks for the widest ratio together with its anion-anion distance
        same_d = (cond.same_element_steer or {}).get(el)
        tiers = tuple((g, None) for g in steers)
        if same_d and steers:
            tiers = ((steers[0], same_d), *tiers)

        xs = solve_values(sg, m, (), 0) if subs else None
        x, _ = yield Num(0.0, _COORD_HI, COORD_DECIMALS, (" ",), max_int_digits=1, values=xs,
                         pinned=_pinned(sg, m, (), 0, xs), accept=coord_check(), hints=lambda: matching()[:, 0],
                         strict_accept=tuple(coord_check(None, g, d) for g, d in tiers) or None)
        typed = ((0, round(x, COORD_DECIMALS)),)
        ys = solve_values(sg, m, typed, 1) if subs else None
        y, _ = yield Num(0.0, _COORD_HI, COORD_DECIMALS, (" ",), max_int_digits=1, values=ys if ys is None or len(ys) else None,
                         pinned=_pinned(sg, m, typed, 1, ys), accept=coord_check(x), hints=lambda x=x: matching(x)[:, 1],
                         strict_accept=tuple(coord_check(x, g, d) for g, d in tiers) or None)
        typed = ((0, round(x, COORD_DECIMALS)), (1, round(y, COORD_DECIMALS)))
        zs = solve_values(sg, m, typed, 2) if subs else None
        zv, _ = yield Num(0.0, _COORD_HI, COORD_DECIMALS, (" ",), max_int_digits=1,
                          values=zs if zs is None or len(zs) else None, pinned=_pinned(sg, m, typed, 2, zs),
                          accept=z_check(x, y), strict_accept=tuple(z_check(x, y, g, d) for g, d in tiers) or None,
                          hints=lambda x=x, y=y: matching(x, y)[:, 2])
        yield Lit("1\n")
        place.place(np.array([x, y, zv]), el)
        remaining[el] = max(0, r - m)
        i += 1
    stats.optimistic += place.optimistic
    yield End()

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
    matrix = lattice_matrix(a, b, c, al, be, ga)
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
