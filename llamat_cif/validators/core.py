"""One text in, one row out: the full validity suite for a single generated crystal."""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

from llamat_cif.protocol import CDVAE_MIN_DISTANCE, CDVAE_MIN_VOLUME
from llamat_cif.validators.composition import compositional_validity, resolve_oxidation_states
from llamat_cif.validators.conditions import condition_adherence
from llamat_cif.validators.consistency import detect_spacegroup, self_consistency
from llamat_cif.validators.parse import MAX_CHARS, listed_atom_counts, parse_text
from llamat_cif.validators.result import CheckResult
from llamat_cif.validators.structural import MAX_LATTICE_LENGTH, MAX_SITES, structural_validity


@dataclass(frozen=True)
class Thresholds:
    """Every setting of the suite (the protocol written into each summary).

    CDVAE: ``min_distance`` 0.5 Å, ``min_volume`` 0.1 Å^3, SMACT 2.2.1's data (``cdvae``) with
    the Pauling test, alloys valid. CrystaLLM: ``symprec`` 0.1 Å, bond tolerance 0.32, hydrogen
    factor 2.5, bond score >= 1.0.
    """

    min_distance: float = CDVAE_MIN_DISTANCE
    min_volume: float = CDVAE_MIN_VOLUME
    include_self_images: bool = False
    oxidation_states: str = "cdvae"
    use_pauling_test: bool = True
    include_alloys: bool = True
    symprec: float = 0.1
    p1_is_claim: bool = False
    check_bonds: bool = True
    bond_tolerance: float = 0.32
    h_factor: float = 2.5
    min_bond_score: float = 1.0
    max_sites: int = MAX_SITES
    max_chars: int = MAX_CHARS
    max_lattice_length: float = MAX_LATTICE_LENGTH

    @classmethod
    def from_kwargs(cls, **kw: Any) -> Thresholds:
        """Build from keyword arguments, refusing unknown names (a typo must not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = set(kw) - known
        if unknown:
            raise TypeError(f"unknown threshold(s) {sorted(unknown)}; known: {sorted(known)}")
        t = cls(**kw)
        object.__setattr__(t, "oxidation_states", resolve_oxidation_states(t.oxidation_states))
        return t

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Output columns in order, with their Arrow types. A null boolean means "not applicable" (no target
#: requested, nothing stated to compare). ``error`` is empty for clean rows; it is filled for every
#: row that did not parse and may be filled for parsed rows (e.g. a timeout in the bond check).
#: ``spacegroup`` is spglib's at ``symprec``; ``stated_spacegroup`` the CIF's own; ``cif`` the parsed
#: structure as a pymatgen P1 CIF (``keep_cif=True``) for the stability stage; ``time_s`` / ``cpu_s``
#: wall and CPU seconds spent on the row.
COLUMNS: dict[str, str] = {
    "id": "string",
    "fmt": "string",
    "parsed": "bool",
    "error": "string",
    "warnings": "string",
    "n_sites": "int64",
    "formula": "string",
    "spacegroup": "int64",
    "min_distance": "float64",
    "volume": "float64",
    "structurally_valid": "bool",
    "structural_reason": "string",
    "compositionally_valid": "bool",
    "compositional_reason": "string",
    "valid": "bool",
    "formula_consistent": "bool",
    "multiplicity_consistent": "bool",
    "spacegroup_consistent": "bool",
    "stated_spacegroup": "int64",
    "bond_length_score": "float64",
    "n_bonds": "int64",
    "self_consistent": "bool",
    "self_consistency_reason": "string",
    "target_formula": "string",
    "target_spacegroup": "int64",
    "formula_match": "bool",
    "spacegroup_match": "bool",
    "condition_adherent": "bool",
    "time_s": "float64",
    "cpu_s": "float64",
    "cif": "string",
}


def empty_row(id_: str, fmt: str = "?") -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(id=str(id_), fmt=fmt, parsed=False, error="", warnings="", structurally_valid=False,
               compositionally_valid=False, valid=False)
    return row


class StructureTimeout(BaseException):  # noqa: N818
    """Raised inside a check when the per-structure time limit is reached.

    A ``BaseException`` (like ``KeyboardInterrupt``) so that the many ``except Exception`` blocks
    in pymatgen and in the checks cannot swallow it.
    """


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Interrupt Python-level work after ``seconds`` (SIGALRM; main thread of a POSIX process only).

    Long C calls are not interrupted by a signal; the worker pool's hard kill covers those.
    """
    usable = (
        seconds is not None and seconds > 0 and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    def _raise(signum, frame):
        raise StructureTimeout(f"exceeded the per-structure time limit of {seconds:g} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _finite_or_none(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if not math.isnan(x) else None


def _run_checks(row: dict[str, Any], text: Any, fmt: str | None, target_formula: Any, target_spacegroup: Any,
                t: Thresholds, keep_cif: bool) -> None:
    parsed = parse_text(text, fmt=fmt, max_chars=t.max_chars, max_sites=t.max_sites,
                        max_lattice_length=t.max_lattice_length)
    row["fmt"] = parsed.fmt
    row["warnings"] = " | ".join(parsed.warnings)[:2000]
    row["target_formula"] = None if target_formula is None else str(target_formula)
    s = parsed.structure
    if not parsed.ok:
        row["error"] = parsed.error
        if s is not None:  # e.g. disordered: still say what it was
            row["n_sites"] = len(s)
            with contextlib.suppress(Exception):
                row["formula"] = s.composition.reduced_formula
        # CDVAE keeps the compositional verdict of a crystal whose cell cannot be built
        counts = listed_atom_counts(parsed, text) if s is None else None
        if counts:
            cv = compositional_validity(counts, oxidation_states=t.oxidation_states,
                                        use_pauling_test=t.use_pauling_test, include_alloys=t.include_alloys)
            row["compositionally_valid"] = bool(cv.ok)
            row["compositional_reason"] = f"{cv.reason} (from the listed atoms; no structure was built)"
    else:
        row["parsed"] = True
        row["n_sites"] = len(s)
        row["formula"] = s.composition.reduced_formula
        sv = structural_validity(s, min_distance=t.min_distance, min_volume=t.min_volume,
                                 include_self_images=t.include_self_images, max_sites=t.max_sites)
        row["structurally_valid"] = bool(sv.ok)
        row["structural_reason"] = sv.reason
        row["min_distance"] = _finite_or_none(sv.details.get("min_distance"))
        row["volume"] = _finite_or_none(sv.details.get("volume"))
        cv = compositional_validity(s, oxidation_states=t.oxidation_states,
                                    use_pauling_test=t.use_pauling_test, include_alloys=t.include_alloys)
        row["compositionally_valid"] = bool(cv.ok)
        row["compositional_reason"] = cv.reason
        row["valid"] = bool(sv.ok and cv.ok)
        sg = detect_spacegroup(s, symprec=t.symprec)
        row["spacegroup"] = sg
        try:
            sc = self_consistency(parsed_text(text) if parsed.fmt == "cif" else None, s, cif_data=parsed.cif_data,
                                  symprec=t.symprec, detected_spacegroup=sg, p1_is_claim=t.p1_is_claim,
                                  # bonds of overlapping atoms mean nothing and make CrystalNN slow
                                  check_bonds=t.check_bonds and bool(sv.ok), bond_tolerance=t.bond_tolerance,
                                  h_factor=t.h_factor, min_bond_score=t.min_bond_score)
        except StructureTimeout as exc:
            # the CDVAE verdicts are already known; only the slow CrystalNN part is lost
            sc = CheckResult(None, f"timeout: {exc}", {})
            row["error"] = f"timeout in self-consistency (validity kept): {exc}"
        for k in ("formula_consistent", "multiplicity_consistent", "spacegroup_consistent",
                  "stated_spacegroup", "n_bonds"):
            row[k] = sc.details.get(k)
        row["bond_length_score"] = _finite_or_none(sc.details.get("bond_length_score"))
        row["self_consistent"] = sc.ok
        row["self_consistency_reason"] = sc.reason
        if keep_cif:
            from llamat_cif.cif import structure_to_cif

            with contextlib.suppress(Exception):
                row["cif"] = structure_to_cif(s)
    ca = condition_adherence(s if parsed.ok else None, target_formula=target_formula,
                             target_spacegroup=target_spacegroup, symprec=t.symprec,
                             detected_spacegroup=row["spacegroup"])
    row["target_formula"] = ca.details.get("target_formula", row["target_formula"])
    row["target_spacegroup"] = ca.details.get("target_spacegroup")
    row["formula_match"] = ca.details.get("formula_match")
    row["spacegroup_match"] = ca.details.get("spacegroup_match")
    row["condition_adherent"] = ca.ok
    if ca.reason.startswith("unreadable target"):
        row["error"] = (row["error"] + "; " if row["error"] else "") + ca.reason


def parsed_text(text: Any) -> str | None:
    if isinstance(text, bytes | bytearray):
        return bytes(text).decode("utf-8", errors="replace")
    return text if isinstance(text, str) else None


def validate_one(
    text: Any,
    *,
    fmt: str | None = None,
    target_formula: str | None = None,
    target_spacegroup: int | str | None = None,
    id: str = "",  # noqa: A002 - the column is called id everywhere in the project
    timeout_s: float | None = None,
    keep_cif: bool = False,
    **thresholds: Any,
) -> dict[str, Any]:
    """Run the whole suite on one generated text. Never raises (bad thresholds aside).

    Args:
        text: CIF or LLaMat text (bytes are decoded as UTF-8).
        fmt: ``"cif"``, ``"llamat"`` or ``None`` to detect.
        target_formula, target_spacegroup: the condition the text was generated for, if any.
        id: the row's id.
        timeout_s: soft per-structure time limit (SIGALRM, main thread only); the pool in
            :func:`llamat_cif.validators.validate_table` adds a hard one.
        keep_cif: add the parsed structure as a pymatgen CIF (column ``cif``) for later stages.
        **thresholds: any field of :class:`Thresholds` (``min_distance=0.5``, ``oxidation_states=...``).

    Returns:
        One row with the columns of :data:`COLUMNS`.

    Raises:
        TypeError, ValueError: only for unknown threshold names or an unknown oxidation-state set.
    """
    t = thresholds.pop("_thresholds", None) or Thresholds.from_kwargs(**thresholds)
    row = empty_row(id, fmt or "?")
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        with time_limit(timeout_s):
            _run_checks(row, text, fmt, target_formula, target_spacegroup, t, keep_cif)
    except StructureTimeout as exc:
        _fail(row, f"timeout: {exc}")
    except MemoryError:
        _fail(row, "out of memory")
    except RecursionError:
        _fail(row, "recursion limit")
    except Exception as exc:  # noqa: BLE001 - one bad structure must never stop a batch
        _fail(row, f"check crashed: {type(exc).__name__}: {str(exc)[:300]}")
    row["time_s"] = time.perf_counter() - t0
    # CPU seconds do not depend on how busy a shared machine is; wall seconds do
    row["cpu_s"] = time.process_time() - c0
    return row


def _fail(row: dict[str, Any], message: str) -> None:
    row["error"] = (row["error"] + "; " if row["error"] else "") + message
    for k in ("structurally_valid", "compositionally_valid", "valid"):
        row[k] = False
