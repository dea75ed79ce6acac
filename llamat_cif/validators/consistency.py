"""Self-consistency of a generated CIF, as CrystaLLM (Antunes et al. 2024) checks it.

A language model writes a CIF's header (formula, space group) and its sites separately, so they
can disagree. CrystaLLM's ``is_valid`` requires:

* *formula*: the stated formulas (``data_`` name, ``_chemical_formula_sum``,
  ``_chemical_formula_structural``) agree; here each stated one must also agree with the sites;
* *multiplicity*: per element, the stated ``_atom_site_symmetry_multiplicity`` values add up to
  the atoms the space group's operations generate (CrystaLLM compares them with the formula sum);
* *space group*: the stated space group is the one spglib finds (``symprec=0.1``). We compare
  International Tables numbers rather than symbol strings (settings spell symbols differently), and
  a stated P1 makes no claim (``p1_is_claim=False``), since P1 CIFs such as pymatgen's are correct
  for any structure;
* *bond lengths*: for every CrystalNN bond, length / (sum of radii) within ``1 ± 0.32`` (ionic radii
  when the electronegativity difference is >= 1.7, else atomic radii; bonds to H only need a ratio
  below 2.5); the fraction of good bonds must reach ``min_bond_score`` (CrystaLLM: 1.0).

Each part is ``None`` when the text states nothing to compare (e.g. LLaMat text has no formula or
space group); the overall verdict combines the parts that apply.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any

from llamat_cif.validators.result import CheckResult

_ELEMENT_PREFIX = re.compile(r"^([A-Z][a-z]?)")


def _as_int(x: Any) -> int | None:
    """A CIF number as an int (``None`` for non-numbers, NaN, inf, fractions)."""
    try:
        v = float(str(x).split("(")[0])
    except (TypeError, ValueError):
        return None
    if not math.isfinite(v) or v != int(v) or abs(v) > 1e9:
        return None
    return int(v)


def _first(cif_data: dict[str, Any] | None, *tags: str) -> Any:
    if not cif_data:
        return None
    for t in tags:
        if t in cif_data:
            v = cif_data[t]
            return v[0] if isinstance(v, list) and v else v
    return None


def _reduced(formula: str) -> str | None:
    from pymatgen.core import Composition

    try:
        comp = Composition(str(formula).strip().strip("'\""))
        return comp.reduced_formula if comp.num_atoms > 0 else None
    except Exception:  # noqa: BLE001 - a stated formula that is not a formula is simply not a claim
        return None


def stated_formulas(cif_text: str, cif_data: dict[str, Any] | None) -> dict[str, str]:
    """Reduced formulas the CIF states: ``{"data_": ..., "_chemical_formula_sum": ...}``."""
    out: dict[str, str] = {}
    m = re.search(r"^\s*data_(\S+)", cif_text or "", re.MULTILINE)
    if m and re.fullmatch(r"(?:[A-Z][a-z]?\d*\.?\d*)+", m.group(1)):
        if (r := _reduced(m.group(1))) is not None:
            out["data_"] = r
    for tag in ("_chemical_formula_sum", "_chemical_formula_structural"):
        v = _first(cif_data, tag)
        if v is not None and (r := _reduced(v)) is not None:
            out[tag] = r
    return out


def stated_spacegroup(cif_data: dict[str, Any] | None) -> int | None:
    """International Tables number the CIF states (number tags first, then the H-M symbol)."""
    v = _first(cif_data, "_symmetry_Int_Tables_number", "_space_group_IT_number")
    n = _as_int(v) if v is not None else None
    if n is not None and 1 <= n <= 230:
        return n
    sym = _first(cif_data, "_symmetry_space_group_name_H-M", "_space_group_name_H-M_alt")
    if sym:
        from llamat_cif.cif import space_group

        sg = space_group(str(sym))
        return int(sg.int_number) if sg is not None else None
    return None


def stated_multiplicities(cif_data: dict[str, Any] | None) -> dict[str, int] | None:
    """Element -> sum of ``_atom_site_symmetry_multiplicity`` over its rows (None if not stated)."""
    if not cif_data or "_atom_site_symmetry_multiplicity" not in cif_data:
        return None
    syms = cif_data.get("_atom_site_type_symbol") or cif_data.get("_atom_site_label")
    mults = cif_data["_atom_site_symmetry_multiplicity"]
    if not isinstance(syms, list) or not isinstance(mults, list) or len(syms) != len(mults):
        return None
    out: dict[str, int] = {}
    for s, m in zip(syms, mults, strict=True):
        em = _ELEMENT_PREFIX.match(str(s).strip())
        k = _as_int(m)
        if not em or k is None:
            return None
        out[em.group(1)] = out.get(em.group(1), 0) + k
    return out


def _radius(el, attr: str) -> float | None:
    try:
        v = getattr(el, attr)
        v = float(v) if v is not None else None
    except Exception:  # noqa: BLE001 - pymatgen has no value for some elements
        return None
    return v if v is not None and math.isfinite(v) and v > 0 else None


def bond_length_score(
    structure,
    *,
    bond_tolerance: float = 0.32,
    h_factor: float = 2.5,
) -> tuple[float | None, int]:
    """CrystaLLM's bond-length reasonableness: fraction of CrystalNN bonds of plausible length.

    Args:
        structure: an ordered pymatgen ``Structure``.
        bond_tolerance: a bond is plausible when length / expected lies in ``(1 - tol, 1 + tol)``.
        h_factor: bonds to hydrogen only need length / expected < ``h_factor``.

    Returns:
        ``(score, n_bonds)``; score is ``None`` when no bond has known radii.
    """
    from pymatgen.analysis.local_env import CrystalNN
    from pymatgen.core import Element

    cnn = CrystalNN()
    lo, hi = 1 - bond_tolerance, 1 + bond_tolerance
    good = total = 0
    with warnings.catch_warnings():
        # CrystalNN warns on every site of a structure without oxidation states; that is expected.
        warnings.simplefilter("ignore")
        nn_all = cnn.get_all_nn_info(structure)
    for i, site in enumerate(structure):
        a = Element(site.specie.symbol)
        for info in nn_all[i]:
            if info["site_index"] == i:
                continue  # a site bonded to its own image: CrystaLLM skips these too
            other = info["site"]
            b = Element(other.specie.symbol)
            length = float(site.distance(other))
            xa, xb = a.X, b.X
            if math.isfinite(xa) and math.isfinite(xb) and abs(xa - xb) >= 1.7:
                cat, an = (a, b) if xa < xb else (b, a)
                ra, rb = _radius(cat, "average_cationic_radius"), _radius(an, "average_anionic_radius")
            else:
                ra, rb = _radius(a, "atomic_radius"), _radius(b, "atomic_radius")
            if ra is None or rb is None:
                continue  # no reference length: neither good nor bad
            ratio = length / (ra + rb)
            if "H" in (a.symbol, b.symbol):
                good += ratio < h_factor
            else:
                good += lo < ratio < hi
            total += 1
    return (good / total if total else None), total


def self_consistency(
    cif_text: str | None,
    structure,
    *,
    cif_data: dict[str, Any] | None = None,
    symprec: float = 0.1,
    detected_spacegroup: int | None = None,
    p1_is_claim: bool = False,
    check_bonds: bool = True,
    bond_tolerance: float = 0.32,
    h_factor: float = 2.5,
    min_bond_score: float = 1.0,
) -> CheckResult:
    """CrystaLLM-style self-consistency of a generated CIF against its own sites.

    Args:
        cif_text: the raw CIF text (``None``/LLaMat text: only the bond check applies).
        structure: the structure parsed from it.
        cif_data: the first data block's tags as pymatgen's ``CifParser.as_dict`` gives them
            (parsed from ``cif_text`` when omitted).
        symprec: spglib tolerance (Å) for the detected space group (CrystaLLM: 0.1).
        detected_spacegroup: reuse a space group already computed with the same ``symprec``.
        p1_is_claim: count a stated P1 as a claim to compare (CrystaLLM does; default no).
        check_bonds: run the CrystalNN bond-length check (the slowest part, ~0.1 s per structure).
        bond_tolerance, h_factor: see :func:`bond_length_score`.
        min_bond_score: smallest acceptable fraction of plausible bonds (CrystaLLM: 1.0).

    Returns:
        A :class:`CheckResult` whose ``details`` hold each part's verdict (``formula_consistent``,
        ``multiplicity_consistent``, ``spacegroup_consistent``, ``bond_length_ok``: True, False or
        None when not applicable) and the numbers behind them.
    """
    from pymatgen.core import Composition

    d: dict[str, Any] = {}
    problems: list[str] = []
    is_cif = bool(cif_text) and "_cell_length_a" in cif_text
    if is_cif and cif_data is None:
        from pymatgen.io.cif import CifParser

        try:
            blocks = CifParser.from_str(cif_text).as_dict()
            cif_data = next(iter(blocks.values())) if blocks else None
        except Exception:  # noqa: BLE001
            cif_data = None
    site_comp = structure.composition
    site_formula = site_comp.reduced_formula

    # formula
    stated = stated_formulas(cif_text, cif_data) if is_cif else {}
    d["stated_formulas"] = stated
    if stated:
        bad = {k: v for k, v in stated.items() if v != site_formula}
        d["formula_consistent"] = not bad
        if bad:
            problems.append("stated formula " + ", ".join(f"{k}={v}" for k, v in bad.items()) + f" != sites {site_formula}")
    else:
        d["formula_consistent"] = None

    # multiplicities
    mult = stated_multiplicities(cif_data) if is_cif else None
    if mult is not None:
        actual = {el.symbol: int(round(a)) for el, a in Composition(site_comp).element_composition.items()}
        d["multiplicity_consistent"] = mult == actual
        if mult != actual:
            problems.append(f"stated multiplicities {mult} != generated sites {actual}")
        fsum = _first(cif_data, "_chemical_formula_sum")
        if fsum is not None:
            try:
                expected = {el.symbol: int(round(a)) for el, a in Composition(str(fsum)).items()}
                if expected != mult:
                    d["multiplicity_consistent"] = False
                    problems.append(f"stated multiplicities {mult} != _chemical_formula_sum {expected}")
            except Exception:  # noqa: BLE001
                pass
    else:
        d["multiplicity_consistent"] = None

    # space group
    sg_stated = stated_spacegroup(cif_data) if is_cif else None
    d["stated_spacegroup"] = sg_stated
    if sg_stated is None or (sg_stated == 1 and not p1_is_claim):
        d["spacegroup_consistent"] = None
    else:
        sg = detected_spacegroup if detected_spacegroup is not None else detect_spacegroup(structure, symprec=symprec)
        d["detected_spacegroup"] = sg
        d["spacegroup_consistent"] = sg == sg_stated
        if sg != sg_stated:
            problems.append(f"stated space group {sg_stated} != detected {sg} (symprec={symprec})")

    # bond lengths
    if check_bonds:
        try:
            score, n_bonds = bond_length_score(structure, bond_tolerance=bond_tolerance, h_factor=h_factor)
        except Exception as exc:  # noqa: BLE001 - CrystalNN fails on some pathological cells
            score, n_bonds = None, 0
            d["bond_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        d["bond_length_score"], d["n_bonds"] = score, n_bonds
        d["bond_length_ok"] = None if score is None else score >= min_bond_score
        if d["bond_length_ok"] is False:
            problems.append(f"bond-length score {score:.3f} < {min_bond_score}")
    else:
        d["bond_length_score"], d["n_bonds"], d["bond_length_ok"] = None, 0, None

    parts = [d[k] for k in ("formula_consistent", "multiplicity_consistent", "spacegroup_consistent", "bond_length_ok")]
    applied = [p for p in parts if p is not None]
    if not applied:
        return CheckResult(None, "nothing stated to check", d)
    if problems:
        return CheckResult(False, "; ".join(problems), d)
    return CheckResult(True, f"{len(applied)} of 4 parts checked, all consistent", d)


def detect_spacegroup(structure, *, symprec: float = 0.1) -> int | None:
    """Space-group number spglib finds (``None`` when it fails)."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        return int(SpacegroupAnalyzer(structure, symprec=symprec).get_space_group_number())
    except Exception:  # noqa: BLE001 - spglib gives up on some degenerate cells
        return None
