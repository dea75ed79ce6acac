"""Parse step: generated text -> pymatgen ``Structure``, keeping the parser's error and warnings.

Generated CIFs are arbitrary text, so CIF goes straight to pymatgen's ``CifParser`` (not through
the canonical reader); LLaMat text goes through :func:`llamat_cif.cif.from_text`. Cheap limits on
the raw text (length, number of site lines, stated cell parameters) run *before* the parser, so a
million-atom document is refused in microseconds instead of being expanded.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llamat_cif.validators.structural import MAX_LATTICE_LENGTH, MAX_SITES, sanity_problem

#: Texts longer than this are refused unparsed. A 1000-site P1 CIF is about 60 kB.
MAX_CHARS = 500_000

_CELL_TAG = re.compile(r"^\s*(_cell_(?:length_[abc]|angle_(?:alpha|beta|gamma)))\s+(\S+)", re.MULTILINE)
_NUMBER_WITH_SU = re.compile(r"^([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?:\(\d+\))?$")


@dataclass
class Parsed:
    """What the parse step knows about one text."""

    fmt: str
    structure: Any = None  # pymatgen Structure when parsing succeeded
    error: str = ""
    warnings: list[str] = field(default_factory=list)
    cif_data: dict[str, Any] | None = None  # tags of the first CIF data block, as pymatgen reads them

    @property
    def ok(self) -> bool:
        return self.structure is not None and not self.error


def detect_fmt(text: str) -> str:
    """``"cif"`` or ``"llamat"`` (:func:`llamat_cif.cif.detect_format`)."""
    from llamat_cif.cif import detect_format

    return detect_format(text)


def _stated_cell_problem(text: str) -> str | None:
    """Reject stated cell parameters pymatgen would silently accept (negative lengths, NaN, 1e9 Å)."""
    for tag, raw in _CELL_TAG.findall(text):
        m = _NUMBER_WITH_SU.match(raw.strip("'\""))
        if not m:
            return f"{tag} is not a number: {raw[:40]!r}"
        v = float(m.group(1))
        if not math.isfinite(v):
            return f"{tag} is not finite"
        if tag.startswith("_cell_length") and not 0 < v <= MAX_LATTICE_LENGTH:
            return f"{tag} = {v:g} outside (0, {MAX_LATTICE_LENGTH}] Å"
        if tag.startswith("_cell_angle") and not 0 < v < 180:
            return f"{tag} = {v:g} outside (0, 180) degrees"
    return None


def _num(x: Any) -> float:
    return float(str(x).split("(")[0])


_SYMBOL = re.compile(r"^([A-Z][a-z]?)")


def _site_rows_problem(block: dict[str, Any] | None) -> str | None:
    """A listed atom pymatgen would drop without an error: occupancy <= 0, NaN or not a number, or a
    type symbol that names no element ("0", "X"). CDVAE counts every listed atom, so such a text is
    not a parse of the crystal it states (pymatgen would score what is left)."""
    if not block:
        return None
    from pymatgen.core.periodic_table import Element

    occ = block.get("_atom_site_occupancy")
    if occ is not None:
        for k, raw in enumerate(occ if isinstance(occ, list) else [occ]):
            if str(raw).strip() == "?":  # CIF's "unknown": pymatgen reads it as 1 and keeps the site
                continue
            m = _NUMBER_WITH_SU.match(str(raw).strip("'\""))
            v = float(m.group(1)) if m else math.nan
            if not (math.isfinite(v) and v > 0):
                return f"atom site {k + 1} has occupancy {str(raw)[:20]!r}: not a number > 0 (the site would be dropped)"
    symbols = block.get("_atom_site_type_symbol")
    if symbols is not None:
        for k, raw in enumerate(symbols if isinstance(symbols, list) else [symbols]):
            m = _SYMBOL.match(str(raw).strip("'\""))
            if m is None or not Element.is_valid_symbol(m.group(1)):
                return f"atom site {k + 1} has type symbol {str(raw)[:20]!r}: not an element (the site would be dropped)"
    return None


def listed_atom_counts(parsed: Parsed, text: Any) -> dict[str, int] | None:
    """Element counts of the atoms a text lists, read without building a structure (None if unclear).

    CDVAE judges compositional validity from a crystal's atom types even when no cell can be built
    from its lattice (its ``Crystal`` keeps ``comp_valid`` when construction fails); this is that
    atom list for a text whose parse failed. CIF: one ``_atom_site`` row per atom times its stated
    ``_atom_site_symmetry_multiplicity`` (1 when absent), element from ``_atom_site_type_symbol``
    (else the label); LLaMat text: the element lines after the two lattice lines.
    """
    from pymatgen.core.periodic_table import Element

    counts: dict[str, int] = {}

    def add(symbol: str, n: int) -> bool:
        m = _SYMBOL.match(symbol.strip("'\""))
        if m is None or not Element.is_valid_symbol(m.group(1)) or n < 1:
            return False
        counts[m.group(1)] = counts.get(m.group(1), 0) + n
        return True

    if parsed.fmt == "llamat" and isinstance(text, str):
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        body = lines[2:]
        if not body or len(body) % 2:
            return None
        for el in body[0::2]:
            if not add(el, 1):
                return None
        return counts
    block = parsed.cif_data
    if not block:
        return None
    symbols = block.get("_atom_site_type_symbol") or block.get("_atom_site_label")
    if symbols is None:
        return None
    symbols = symbols if isinstance(symbols, list) else [symbols]
    mult = block.get("_atom_site_symmetry_multiplicity")
    mult = (mult if isinstance(mult, list) else [mult]) if mult is not None else ["1"] * len(symbols)
    if len(mult) != len(symbols):
        return None
    for sym, m in zip(symbols, mult, strict=True):
        try:
            k = int(float(str(m).split("(")[0]))
        except ValueError:
            return None
        if not add(str(sym), k):
            return None
    return counts or None


def _expanded_site_estimate(block: dict[str, Any] | None) -> int | None:
    """Sites the symmetry operations will generate, counted with numpy before pymatgen does it.

    pymatgen expands each ``_atom_site`` row in Python; 60 general positions in Fm-3m take 20 s
    there but milliseconds here. ``None`` when the block does not say enough to estimate.
    """
    if not block:
        return None
    try:
        xs, ys, zs = (block.get(f"_atom_site_fract_{c}") for c in "xyz")
        if not isinstance(xs, list) or not isinstance(ys, list) or not isinstance(zs, list):
            return None
        n = min(len(xs), len(ys), len(zs))
        xyz = np.array([[_num(a), _num(b), _num(c)] for a, b, c in zip(xs[:n], ys[:n], zs[:n], strict=True)])
        if not np.all(np.isfinite(xyz)):
            return None
        ops_xyz = None
        for tag in ("_symmetry_equiv_pos_as_xyz", "_space_group_symop_operation_xyz"):
            if block.get(tag):
                ops_xyz = block[tag] if isinstance(block[tag], list) else [block[tag]]
                break
        if ops_xyz is not None:
            from pymatgen.core.operations import SymmOp

            ops = [SymmOp.from_xyz_str(o) for o in ops_xyz[:1000]]
            rot = np.array([o.rotation_matrix for o in ops])
            trans = np.array([o.translation_vector for o in ops])
        else:
            from llamat_cif.cif import space_group

            sym = block.get("_symmetry_space_group_name_H-M") or block.get("_space_group_name_H-M_alt")
            sg = space_group(str(sym)) if sym else None
            if sg is None:
                return n
            rot = np.array([o.rotation_matrix for o in sg.symmetry_ops])
            trans = np.array([o.translation_vector for o in sg.symmetry_ops])
        total = 0
        for p in xyz:
            images = np.mod(np.einsum("kij,j->ki", rot, p) + trans, 1.0)
            total += len(np.unique(np.round(images, 3) % 1.0, axis=0))
        return int(total)
    except Exception:  # noqa: BLE001 - an estimate only; pymatgen gives the real verdict
        return None


def _parse_cif(text: str, out: Parsed, max_sites: int = MAX_SITES) -> None:
    from pymatgen.io.cif import CifParser

    if (problem := _stated_cell_problem(text)) is not None:
        out.error = problem
        return
    from llamat_cif.cif import keep_space_groups

    keep_space_groups(text)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            parser = CifParser.from_str(text)
            blocks = parser.as_dict()
            out.cif_data = next(iter(blocks.values())) if blocks else None
            if (problem := _site_rows_problem(out.cif_data)) is not None:
                out.error = problem
                return
            estimate = _expanded_site_estimate(out.cif_data)
            # 2x margin: the estimate dedupes images more coarsely than pymatgen; it only has to
            # catch blow-ups (one row x 192 operations), the exact count is checked after parsing
            if estimate is not None and estimate > 2 * max_sites:
                out.error = f"about {estimate} sites after symmetry expansion exceeds max_sites={max_sites}"
                return
            structures = parser.parse_structures(primitive=False, on_error="raise")
        except Exception as exc:  # noqa: BLE001 - pymatgen raises many kinds; each is a row error
            out.error = f"CIF parse failed: {type(exc).__name__}: {str(exc)[:300]}"
            structures = []
        finally:
            out.warnings = _dedupe(str(w.message) for w in caught)
    if not out.error:
        if not structures:
            out.error = "CIF holds no structure"
        else:
            out.structure = structures[0]


def _parse_llamat(text: str, out: Parsed) -> None:
    from llamat_cif.cif import CrystalTextError, from_text

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out.structure = from_text(text, fmt="llamat")
        except CrystalTextError as exc:
            out.error = f"LLaMat text parse failed: {exc}"
        except Exception as exc:  # noqa: BLE001
            out.error = f"LLaMat text parse failed: {type(exc).__name__}: {str(exc)[:300]}"
        finally:
            out.warnings = _dedupe(str(w.message) for w in caught)


def _dedupe(msgs) -> list[str]:
    seen: list[str] = []
    for m in msgs:
        m = m.strip()[:300]
        if m and m not in seen:
            seen.append(m)
    return seen


def parse_text(
    text: Any,
    *,
    fmt: str | None = None,
    max_chars: int = MAX_CHARS,
    max_sites: int = MAX_SITES,
    max_lattice_length: float = MAX_LATTICE_LENGTH,
) -> Parsed:
    """Turn one generated text into a structure, or say why not. Never raises.

    Args:
        text: the raw text (bytes are decoded as UTF-8 with replacement).
        fmt: ``"cif"``, ``"llamat"`` or ``None`` to detect.
        max_chars: longer texts are refused before parsing.
        max_sites: structures with more sites are refused (for LLaMat text, before building them).
        max_lattice_length: longer lattice vectors (Å) are refused.

    Returns:
        A :class:`Parsed` whose ``error`` is empty exactly when ``structure`` is usable.
    """
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8", errors="replace")
    if text is None or (isinstance(text, float) and math.isnan(text)):
        text = ""
    if not isinstance(text, str):
        return Parsed(fmt=str(fmt or "?"), error=f"text is {type(text).__name__}, not str")
    text = text.replace("\x00", "")
    if fmt not in ("cif", "llamat"):
        fmt = detect_fmt(text) if text.strip() else (fmt or "?")
    out = Parsed(fmt=str(fmt))
    if not text.strip():
        out.error = "empty text"
        return out
    if len(text) > max_chars:
        out.error = f"text of {len(text)} characters exceeds max_chars={max_chars}"
        return out
    try:
        if fmt == "llamat":
            # one element line + one coordinate line per site, after two lattice lines
            n_lines = sum(1 for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#"))
            if (n_lines - 2) // 2 > max_sites:
                out.error = f"about {(n_lines - 2) // 2} sites exceeds max_sites={max_sites}"
                return out
            _parse_llamat(text, out)
        else:
            if text.count("\n") > 4 * max_sites + 2000:
                out.error = f"{text.count(chr(10))} lines: more sites than max_sites={max_sites} allows"
                return out
            _parse_cif(text, out, max_sites)
    except RecursionError:
        out.error = "parser recursion limit"
    if out.structure is not None and not out.error:
        try:
            problem = sanity_problem(out.structure, max_sites=max_sites, max_lattice_length=max_lattice_length)
        except Exception as exc:  # noqa: BLE001
            problem = f"unusable structure: {type(exc).__name__}: {exc}"
        if problem:
            out.error = problem
    if out.error:
        out.structure = None if "sites exceeds" in out.error else out.structure
    return out
