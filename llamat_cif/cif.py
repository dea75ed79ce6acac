"""Canonical crystal text <-> pymatgen ``Structure``: the one place where structures become text.

Two representations, both readable back into a ``Structure``:

* ``"cif"`` (default): a compact, deterministic, symmetry-aware CIF. The structure is standardised
  by spglib (through ``SpacegroupAnalyzer``, ``symprec=0.1``) into its conventional cell; only the
  asymmetric unit is written, one row per Wyckoff orbit with its multiplicity. No symmetry-operation
  loop is written: readers (pymatgen's ``CifParser`` included) rebuild the operations from the
  Hermann-Mauguin symbol, which keeps documents short (Fm-3m alone has 192 operations). Numbers
  have fixed decimals and tags a fixed order, so the same crystal gives the same text whatever its
  site order, origin or cell setting.

  ::

      data_NaCl
      _symmetry_space_group_name_H-M Fm-3m
      ...
      Na Na0 4 0.0000 0.0000 0.0000 1

* ``"llamat"``: the plain format LLaMat-CIF and Gruver et al. (crystal-text-llm) generate, P1 in the
  Niggli-reduced cell: lattice lengths (1 decimal), angles (integers), then per site one element line
  and one line of fractional coordinates (2 decimals).

Both formats may start with ``# key: value`` comment lines (a conditioning header, see
:mod:`llamat_cif.corpus`); readers skip them.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from functools import lru_cache
from typing import Literal

import numpy as np
from pymatgen.core import Composition, Element, Lattice, Structure

Format = Literal["cif", "llamat"]
FORMATS: tuple[str, ...] = ("cif", "llamat")

#: Decimals of each number in the canonical CIF. 3 decimals on lengths is 0.0005 Å; 4 on
#: fractional coordinates is < 0.002 Å in a 20 Å cell: far below any structural tolerance.
LENGTH_DECIMALS = 3
ANGLE_DECIMALS = 2
COORD_DECIMALS = 4
VOLUME_DECIMALS = 2
#: spglib tolerance (Å) for finding the space group; 0.1 is what CrystaLLM and most MP tooling use.
SYMPREC = 0.1

#: Fixed tag order of the canonical CIF (also the multi-character tokens of the tokenizer).
CIF_HEADER_TAGS = (
    "_symmetry_space_group_name_H-M",
    "_symmetry_Int_Tables_number",
    "_cell_length_a",
    "_cell_length_b",
    "_cell_length_c",
    "_cell_angle_alpha",
    "_cell_angle_beta",
    "_cell_angle_gamma",
    "_chemical_formula_sum",
    "_cell_volume",
    "_cell_formula_units_Z",
)
CIF_SITE_TAGS = (
    "_atom_site_type_symbol",
    "_atom_site_label",
    "_atom_site_symmetry_multiplicity",
    "_atom_site_fract_x",
    "_atom_site_fract_y",
    "_atom_site_fract_z",
    "_atom_site_occupancy",
)


class CrystalTextError(ValueError):
    """Text that does not describe a crystal, or a structure that cannot be written."""


# ------------------------------------------------------------------------------------ helpers


def _fmt(x: float, decimals: int) -> str:
    s = f"{x:.{decimals}f}"
    # "-0.0000" and "0.0000" are the same number: write it one way.
    return s[1:] if s.startswith("-") and float(s) == 0 else s


def _wrap(x: np.ndarray, decimals: int) -> np.ndarray:
    """Fractional coordinates in [0, 1) after rounding (so 0.99996 -> 0.0, never 1.0000)."""
    r = np.round(np.mod(x, 1.0), decimals)
    r[r >= 1.0] = 0.0
    return r + 0.0  # drop negative zeros


def _check_structure(structure: Structure) -> None:
    if not isinstance(structure, Structure):
        raise CrystalTextError(f"expected a pymatgen Structure, got {type(structure).__name__}")
    if len(structure) == 0:
        raise CrystalTextError("structure has no sites")
    if not structure.is_ordered:
        raise CrystalTextError("disordered structure (partial occupancies) cannot be written as canonical text")
    if not np.all(np.isfinite(structure.lattice.matrix)) or structure.volume <= 0:
        raise CrystalTextError("structure has a degenerate or non-finite lattice")


def strip_header(text: str) -> tuple[dict[str, str], str]:
    """Split leading ``# key: value`` lines from a document.

    Returns:
        The header as a dict (keys lower-cased) and the remaining text.
    """
    header: dict[str, str] = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines) and lines[i].startswith("#"):
        body = lines[i][1:].strip()
        if ":" in body:
            k, v = body.split(":", 1)
            header[k.strip().lower()] = v.strip()
        i += 1
    return header, "\n".join(lines[i:])


def detect_format(text: str) -> Format:
    """Guess the representation of a text: CIF if it has CIF tags, else the LLaMat format."""
    _, body = strip_header(text)
    return "cif" if ("_cell_length_a" in body or body.lstrip().startswith("data_")) else "llamat"


# --------------------------------------------------------------------------------- CIF writer


def _cif_text(structure: Structure, symprec: float) -> str:
    """Canonical CIF: spglib on the Niggli cell, every admissible origin tried, smallest text wins.

    spglib's standardisation fixes the setting of the space group but, among origins that are
    equivalent under the group's normaliser (Na or Cl at the origin of rock salt), it keeps the one
    closest to the input. Trying each atom of the rarest species as origin gives the same set of
    candidate texts whatever the input's origin or site order; the lexicographic minimum of that set
    is the canonical text.
    """
    red = structure.get_reduced_structure()  # Niggli cell: one input cell per lattice
    numbers = [site.specie.Z for site in red]
    counts = Counter(numbers)
    rare = min(counts, key=lambda z: (counts[z], -z))
    lattice = red.lattice.matrix
    frac = red.frac_coords
    best: str | None = None
    for i in (j for j, z in enumerate(numbers) if z == rare):
        text = _cif_from_cell(lattice, np.mod(frac - frac[i], 1.0), numbers, symprec)
        if best is None or text < best:
            best = text
    assert best is not None
    return best


def _cif_from_cell(lattice: np.ndarray, frac: np.ndarray, numbers: list[int], symprec: float) -> str:
    import spglib

    ds = None
    try:
        ds = spglib.get_symmetry_dataset((lattice, frac, numbers), symprec=symprec)
    except Exception:  # noqa: BLE001 - spglib raises on pathological cells; P1 is still a valid CIF
        ds = None
    if ds is None:
        std_lat, std_pos, std_types = lattice, frac, list(numbers)
        number, symbol = 1, "P1"
        orbit_of = list(range(len(numbers)))
    else:
        std_lat, std_pos, std_types = ds.std_lattice, ds.std_positions, list(ds.std_types)
        number, symbol = ds.number, ds.international
        # Orbits of the standardised cell: std atom -> primitive atom -> an input atom -> its orbit.
        prim_to_input = {}
        for j, p in enumerate(ds.mapping_to_primitive):
            prim_to_input.setdefault(int(p), j)
        orbit_of = [int(ds.equivalent_atoms[prim_to_input[int(p)]]) for p in ds.std_mapping_to_primitive]
    orbits: dict[int, list[int]] = {}
    for k, o in enumerate(orbit_of):
        orbits.setdefault(o, []).append(k)
    ops = None
    if ds is not None:
        sym = spglib.get_symmetry((std_lat, std_pos, std_types), symprec=symprec)
        ops = (sym["rotations"], sym["translations"]) if sym else None
    rows = []
    for members in orbits.values():
        pos = np.asarray([std_pos[k] for k in members], dtype=float)
        if ops is None:
            rep, dec = min(tuple(_wrap(p, COORD_DECIMALS)) for p in pos), COORD_DECIMALS
        else:
            rep, dec = _representative(pos, ops, std_lat, symprec)
        rows.append((std_types[members[0]], len(members), rep, dec))
    rows.sort()
    lat = Lattice(std_lat)
    cell = [_fmt(x, LENGTH_DECIMALS) for x in lat.abc] + [_fmt(x, ANGLE_DECIMALS) for x in lat.angles]
    comp = Composition({Element.from_Z(z): std_types.count(z) for z in set(std_types)})
    _, z_units = comp.get_reduced_composition_and_factor()
    sum_formula = " ".join(f"{el.symbol}{_int_amount(amt)}" for el, amt in formula_items(comp))
    lines = [
        f"data_{comp.reduced_formula}",
        f"_symmetry_space_group_name_H-M {symbol}",
        f"_symmetry_Int_Tables_number {number}",
        *(f"{tag} {x}" for tag, x in zip(CIF_HEADER_TAGS[2:8], cell, strict=True)),
        f"_chemical_formula_sum '{sum_formula}'",
        f"_cell_volume {written_volume(*map(float, cell)):.{VOLUME_DECIMALS}f}",
        f"_cell_formula_units_Z {int(round(z_units))}",
        "loop_",
        *CIF_SITE_TAGS,
    ]
    for i, (z, mult, rep, dec) in enumerate(rows):
        el = Element.from_Z(z).symbol
        xyz = " ".join(_fmt(c, dec) for c in rep)
        lines.append(f"{el} {el}{i} {mult} {xyz} 1")
    return "\n".join(lines) + "\n"


def written_volume(a: float, b: float, c: float, alpha: float, beta: float, gamma: float) -> float:
    """``_cell_volume`` of the canonical CIF: the volume of the cell as written (rounded parameters;
    what the CIF grammar, which knows only those, writes too)."""
    return abs(float(np.linalg.det(Lattice.from_parameters(a, b, c, alpha, beta, gamma).matrix)))


def _idealize(p: np.ndarray, ops: tuple[np.ndarray, np.ndarray], lattice: np.ndarray, tol: float) -> np.ndarray:
    """Project a position onto its special position: the mean of its images under the operations
    that (within ``tol`` Å) leave it in place. spglib keeps positions as given within symprec, and a
    Wyckoff site 0.03 Å off its mirror would otherwise come back from the CIF as a doubled orbit.
    """
    rots, trans = ops
    images = np.einsum("kij,j->ki", rots, p) + trans
    diff = images - p
    diff -= np.round(diff)
    close = np.linalg.norm(diff @ lattice, axis=1) < tol
    return p + diff[close].mean(axis=0) if close.any() else p


def _representative(pos: np.ndarray, ops, lattice: np.ndarray, tol: float) -> tuple[tuple, int]:
    """Orbit representative that survives rounding.

    Members are idealised onto their special position, rounded, and kept only if the rounded point,
    as the reader takes it (pymatgen's ``CifParser`` reads a value within a relative 1e-4 of 1/3 or
    2/3 as that third), is still fixed by the member's site-stabiliser: a member written as (x, 2x,
    z) loses the relation when x and 2x are rounded separately and the reader then generates a
    doubled orbit, while (x, -x, z) keeps it. The smallest safe member wins (order-independent);
    if no member is safe at ``COORD_DECIMALS`` decimals (1 of 2,000 MP-20 test crystals), more are used.
    """
    rots, trans = ops
    ideal = [_idealize(p, ops, lattice, tol) for p in pos]
    for dec in (COORD_DECIMALS, COORD_DECIMALS + 1, COORD_DECIMALS + 2):
        safe = []
        for p in ideal:
            q = _wrap(p, dec)
            d = np.einsum("kij,j->ki", rots, p) + trans - p
            d -= np.round(d)
            stab = np.linalg.norm(d @ lattice, axis=1) < tol
            qr = q.copy()
            for third in (1 / 3, 2 / 3):
                qr[np.abs(q / third - 1.0) <= 1e-4] = third
            dq = np.einsum("kij,j->ki", rots[stab], qr) + trans[stab] - qr
            dq -= np.round(dq)
            if np.abs(dq).max(initial=0.0) < 0.5 * 10.0**-dec:
                safe.append(tuple(q))
        if safe:
            return min(safe), dec
    return min(tuple(_wrap(p, COORD_DECIMALS + 2)) for p in ideal), COORD_DECIMALS + 2


def formula_items(comp: Composition):
    """Elements in pymatgen's formula order (by electronegativity), with amounts: the order of
    ``_chemical_formula_sum`` (and of the constrained decoder's formula field)."""
    return sorted(comp.items(), key=lambda kv: (kv[0].X if not math.isnan(kv[0].X) else 99, kv[0].symbol))


def _int_amount(x: float) -> str:
    return str(int(round(x))) if abs(x - round(x)) < 1e-6 else f"{x:g}"


# ------------------------------------------------------------------------------ LLaMat writer


def _llamat_text(structure: Structure, *, permute: np.random.Generator | None = None) -> str:
    red = structure.get_reduced_structure()  # Niggli: one cell per lattice, whatever the input setting
    lat = red.lattice
    frac = _wrap(red.frac_coords, 2)
    sites = [(s.specie.symbol, Element(s.specie.symbol).Z, tuple(f)) for s, f in zip(red, frac, strict=True)]
    if permute is None:
        sites.sort(key=lambda t: (t[1], t[2]))
    else:
        order = permute.permutation(len(sites))
        sites = [sites[i] for i in order]
    lines = [
        " ".join(_fmt(x, 1) for x in (lat.a, lat.b, lat.c)),
        " ".join(str(int(round(x))) for x in (lat.alpha, lat.beta, lat.gamma)),
    ]
    for sym_el, _, f in sites:
        lines.append(sym_el)
        lines.append(" ".join(_fmt(x, 2) for x in f))
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------- public API


def to_text(
    structure: Structure,
    fmt: Format = "cif",
    *,
    symprec: float = SYMPREC,
    permute: np.random.Generator | None = None,
) -> str:
    """Write a structure as canonical text.

    Args:
        structure: an ordered pymatgen ``Structure``.
        fmt: ``"cif"`` (symmetry-aware canonical CIF) or ``"llamat"`` (P1, LLaMat/Gruver layout).
        symprec: spglib tolerance in Å for the CIF representation.
        permute: for ``"llamat"`` only: a random generator to shuffle the site order (augmentation);
            ``None`` gives the canonical order (by atomic number, then coordinates).

    Raises:
        CrystalTextError: for empty, disordered or degenerate structures, or an unknown format.
    """
    _check_structure(structure)
    if fmt == "cif":
        return _cif_text(structure, symprec)
    if fmt == "llamat":
        return _llamat_text(structure, permute=permute)
    raise CrystalTextError(f"unknown format {fmt!r}; use one of {FORMATS}")


_NUM = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)$")


def _parse_llamat(text: str) -> Structure:
    lines = [ln.strip() for ln in text.strip().split("\n") if ln.strip()]
    if len(lines) < 4:
        raise CrystalTextError(f"LLaMat text needs >= 4 non-empty lines (lattice, angles, element, coords), got {len(lines)}")

    def numbers(line: str, what: str, n: int = 3) -> list[float]:
        parts = line.split()
        if len(parts) != n or not all(_NUM.match(p) for p in parts):
            raise CrystalTextError(f"{what}: expected {n} numbers, got {line!r}")
        vals = [float(p) for p in parts]
        if not all(math.isfinite(v) for v in vals):
            raise CrystalTextError(f"{what}: non-finite number in {line!r}")
        return vals

    abc = numbers(lines[0], "lattice lengths")
    angles = numbers(lines[1], "lattice angles")
    if min(abc) <= 0:
        raise CrystalTextError(f"lattice lengths must be positive, got {abc}")
    if not all(0 < x < 180 for x in angles):
        raise CrystalTextError(f"lattice angles must lie in (0, 180), got {angles}")
    body = lines[2:]
    if len(body) % 2:
        raise CrystalTextError("site lines must come in pairs (element line, coordinate line); the last is incomplete")
    species, coords = [], []
    for i in range(0, len(body), 2):
        el = body[i]
        try:
            Element(el)
        except ValueError as exc:
            raise CrystalTextError(f"site {i // 2}: unknown element {el!r}") from exc
        species.append(el)
        coords.append(numbers(body[i + 1], f"site {i // 2} coordinates"))
    lattice = Lattice.from_parameters(*abc, *angles)
    if not np.isfinite(lattice.volume) or lattice.volume <= 1e-6:
        raise CrystalTextError(f"lattice parameters {abc} {angles} give no cell volume")
    return Structure(lattice, species, coords)


#: pymatgen warnings left out of an error message: routine notes, or a repeat of the reasons listed.
_QUIET_WARNINGS = ("No _symmetry_equiv", "Issues encountered while parsing CIF")
_HM_TAG = re.compile(r"^\s*_(?:symmetry_space_group_name_H[-_]M|space_group_name_H-M_alt)_?\s+(.+?)\s*$", re.M | re.I)


@lru_cache(maxsize=2048)  # bounded: hostile texts can name any number of non-groups
def space_group(symbol: str):
    """pymatgen's ``SpaceGroup`` for a Hermann-Mauguin symbol as CIFs write it (``None``: unknown),
    built once per process and kept: pymatgen caches groups weakly and builds each with ``allclose``
    comparisons (~0.1 s, ~1 s for Fd-3m), on every read of a CIF giving only the symbol."""
    from pymatgen.symmetry.groups import SYMM_DATA, SpaceGroup
    keys = {re.sub(r"[\s_]", "", k): k for k in SYMM_DATA["space_group_encoding"]}
    key = keys.get(re.sub(r"[\s_]", "", symbol.strip().strip("'\"")))
    try:
        return None if key is None else SpaceGroup(key)  # the call CifParser.get_symops makes
    except Exception:  # noqa: BLE001 - CifParser, too, passes over a group it cannot build
        return None


def keep_space_groups(text: str) -> None:
    """Build (once, :func:`space_group`) the groups a CIF names by symbol alone, before pymatgen
    parses it; a CIF with an operations loop is left to ``CifParser`` (it never builds the group)."""
    if "_symmetry_equiv_pos_as_xyz" not in text and "_space_group_symop_operation_xyz" not in text:
        for found in _HM_TAG.finditer(text[:20000]):
            space_group(found.group(1)[:40])


def read_cif(text: str, *, strict: bool = False) -> Structure:
    """The one CIF reader: CIF text -> pymatgen ``Structure``, the cell as written (not primitive).

    Tolerant by default: the same structure ``Structure.from_str(text, fmt="cif")`` gives (a data
    block that does not parse is skipped; the first one that does is read), without pymatgen's CIF
    warnings in the output. ``strict=True`` is how :func:`from_text` reads generated documents: it
    also refuses text without ``_cell_length_a`` and any data block that does not parse.

    Raises:
        CrystalTextError: empty or unreadable text, with a one-line message (pymatgen's error and
            the warnings that explain it).
    """
    from pymatgen.io.cif import CifParser

    if not isinstance(text, str) or not text.strip():
        raise CrystalTextError("empty text")
    if strict and "_cell_length_a" not in text:
        raise CrystalTextError("not a CIF: no _cell_length_a tag")
    keep_space_groups(text)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            parser = CifParser.from_str(text)
            structures = parser.parse_structures(primitive=False, on_error="raise" if strict else "warn")
        except Exception as exc:  # noqa: BLE001 - pymatgen raises many kinds of errors
            msgs = "; ".join(str(w.message) for w in caught if not str(w.message).startswith(_QUIET_WARNINGS))
            msg = f"CIF could not be parsed: {type(exc).__name__}: {exc}" + (f" ({msgs[:300]})" if msgs else "")
            raise CrystalTextError(" ".join(msg.split())) from exc
    if not structures or len(structures[0]) == 0:  # pymatgen raises first; kept as a guard
        raise CrystalTextError("CIF holds no structure with sites")
    return structures[0]


def read_cif_or_none(text: str | None) -> Structure | None:
    """:func:`read_cif` (tolerant), or None where there is no text or it does not parse."""
    try:
        return read_cif(text)
    except CrystalTextError:
        return None


def from_text(text: str, fmt: Format | None = None) -> Structure:
    """Read canonical text (either format) back into a ``Structure``.

    Args:
        text: a document, optionally with a leading ``# key: value`` header.
        fmt: ``"cif"``, ``"llamat"`` or ``None`` to detect it.

    Raises:
        CrystalTextError: with a message saying what is wrong with the text.
    """
    if not isinstance(text, str) or not text.strip():
        raise CrystalTextError("empty text")
    _, body = strip_header(text)
    fmt = fmt or detect_format(body)
    if fmt == "cif":
        return read_cif(body, strict=True)
    if fmt == "llamat":
        return _parse_llamat(body)
    raise CrystalTextError(f"unknown format {fmt!r}; use one of {FORMATS}")


def structure_to_cif(structure: Structure) -> str:
    """A plain pymatgen P1 CIF (for files users open in other programs).

    Symmetry copies read from a symmetric CIF share their site label; the labels are renumbered
    (``Na1``, ``Na2``, ...) so the file keeps the CIF rule that ``_atom_site_label`` is unique.
    The input structure is left as it is.
    """
    from pymatgen.io.cif import CifWriter

    return str(CifWriter(structure.copy().relabel_sites()))
