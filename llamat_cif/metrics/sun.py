"""S.U.N.: stable, unique and novel generated structures (MatterGen's definition).

* **Unique**: no earlier structure of the generated set matches it (pymatgen ``StructureMatcher``,
  default tolerances ``ltol=0.2, stol=0.3, angle_tol=5``); comparisons only within one reduced
  formula, which is what makes it scale.
* **Novel**: it matches no training structure (same matcher, same formula grouping). Here the
  training set is "MP-20 train, available subset (n=8344)", so novelty is measured against that
  subset and says so.
* **Compositionally novel** (reported separately): its chemical system (set of elements) is absent
  from the full MP-20 element-presence matrix (45,229 rows, ``hull/lemat_mp20_misc/``), where
  only compositions, not structures, are available.
* **Stable**: ``e_hull <= e_hull_stable`` (0 eV/atom); the metastable variant uses 0.1.

S.U.N. rate = stable & unique & novel over **all generated** samples (the denominator is stated).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from llamat_cif.paths import data_dir as resolve_data_dir
from llamat_cif.protocol import E_HULL_METASTABLE, E_HULL_STABLE

COMPOSITION_MATRIX = "hull/lemat_mp20_misc/mp20_compositions.npz"


def structure_matcher(**kw):
    """pymatgen ``StructureMatcher`` with ``kw`` (S.U.N.: ``ltol=0.2, stol=0.3, angle_tol=5``, its defaults)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher(**kw)


def parse_structure(cif: str | None):
    """A pymatgen ``Structure`` from CIF text, or None when there is none or it does not parse."""
    from pymatgen.core import Structure

    if not isinstance(cif, str) or not cif.strip():
        return None
    try:
        return Structure.from_str(cif, fmt="cif")
    except Exception:  # noqa: BLE001 - unparsable -> treated as absent
        return None


def unique_representatives(ids: Sequence[str], structures: Sequence, *, ltol: float = 0.2, stol: float = 0.3,
                           angle_tol: float = 5.0) -> dict[str, str]:
    """Map every id to the id of the first structure (input order) it matches.

    A structure is unique when it maps to itself. ``None`` structures map to themselves.
    """
    sm = structure_matcher(ltol=ltol, stol=stol, angle_tol=angle_tol)
    by_formula: dict[str, list[int]] = defaultdict(list)
    rep = {str(i): str(i) for i in ids}
    for k, s in enumerate(structures):
        if s is not None:
            by_formula[s.composition.reduced_formula].append(k)
    for members in by_formula.values():
        kept: list[int] = []
        for k in members:
            for j in kept:
                if sm.fit(structures[j], structures[k]):
                    rep[str(ids[k])] = str(ids[j])
                    break
            else:
                kept.append(k)
    return rep


class TrainingSet:
    """Training structures indexed by reduced formula; CIFs parsed only when a formula is queried.

    Args:
        formulas: reduced formula per training structure.
        cifs: CIF text per training structure.
        name: description recorded in results.
    """

    def __init__(self, formulas: Sequence[str], cifs: Sequence[str], name: str = "custom"):
        from pymatgen.core import Composition

        self.name = name
        self._cifs: dict[str, list[str]] = defaultdict(list)
        for f, c in zip(formulas, cifs, strict=True):
            self._cifs[Composition(f).reduced_formula].append(c)
        self._parsed: dict[str, list] = {}
        self.n = len(cifs)

    @classmethod
    def mp20_train(cls, data_dir: str | Path | None = None) -> TrainingSet:
        """MP-20 train, available subset (n=8344), via :func:`llamat_cif.data.load_split`."""
        return cls.from_split("mp20", "train", data_dir)

    @classmethod
    def from_split(cls, dataset: str, split: str = "train", data_dir: str | Path | None = None) -> TrainingSet:
        """A registry split (:func:`llamat_cif.data.load_split`; raises its ``DataError`` when absent).

        Formulas come from the ``pretty_formula`` column where the dataset has one, else from the
        parsed CIFs (rows that do not parse are left out).
        """
        from llamat_cif.data import get_dataset, load_split

        df = load_split(dataset, split, data_dir=data_dir)
        if "pretty_formula" in df.columns:
            formulas, cifs = df["pretty_formula"].astype(str).tolist(), df["cif"].tolist()
        else:
            parsed = [(parse_structure(c), c) for c in df["cif"]]
            formulas = [s.composition.reduced_formula for s, _ in parsed if s is not None]
            cifs = [c for s, c in parsed if s is not None]
        name = get_dataset(dataset).name
        label = "MP-20 train, available subset" if (name, split) == ("mp20", "train") else f"{name} {split}"
        return cls(formulas, cifs, name=f"{label} (n={len(df)})")

    @classmethod
    def from_structures(cls, structures: Sequence, name: str = "custom") -> TrainingSet:
        return cls([s.composition.reduced_formula for s in structures], [s.to(fmt="cif") for s in structures], name)

    def formulas(self) -> list[str]:
        """Reduced formula of every training structure (sorted; repeated as often as it occurs)."""
        return sorted(f for f, cifs in self._cifs.items() for _ in cifs)

    def candidates(self, formula: str) -> list:
        if formula not in self._parsed:
            self._parsed[formula] = [s for s in (parse_structure(c) for c in self._cifs.get(formula, [])) if s is not None]
        return self._parsed[formula]

    def has_formula(self, formula: str) -> bool:
        return formula in self._cifs

    def is_novel(self, structure, matcher=None) -> bool:
        """True when no training structure with the same reduced formula matches."""
        sm = matcher or structure_matcher()
        return not any(sm.fit(structure, t) for t in self.candidates(structure.composition.reduced_formula))


def load_chemical_systems(data_dir: str | Path | None = None, path: str | Path | None = None) -> set[frozenset[str]]:
    """Chemical systems (element sets) present in the MP-20 element-presence matrix."""
    import scipy.sparse as sp
    from pymatgen.core import Element

    p = Path(path) if path else resolve_data_dir(data_dir) / COMPOSITION_MATRIX
    m = sp.load_npz(p).tocsr()
    symbols = [Element.from_Z(z).symbol for z in range(1, m.shape[1] + 1)]
    return {frozenset(symbols[j] for j in m.indices[m.indptr[i]:m.indptr[i + 1]]) for i in range(m.shape[0])}


def sun_table(
    df: pd.DataFrame,
    *,
    training: TrainingSet | None,
    chemical_systems: set[frozenset[str]] | None = None,
    cif_column: str = "relaxed_cif",
    e_hull_stable: float = 0.0,
    e_hull_metastable: float = E_HULL_METASTABLE,
) -> pd.DataFrame:
    """Per-structure flags: ``unique``, ``duplicate_of``, ``novel``, ``chemsys_novel``, ``stable``,
    ``metastable``, ``sun``, ``msun``.

    Args:
        df: rows with ``id``, a CIF column and ``e_hull`` (e.g. ``stability.parquet``).
        training: training structures for novelty (None: novelty not assessed, all NaN).
        chemical_systems: element sets for compositional novelty (None: not assessed).
        cif_column: which CIF to compare (the relaxed one by default).
        e_hull_stable: S.U.N. stability threshold, eV/atom (MatterGen: 0).
        e_hull_metastable: metastability threshold for M.S.U.N., eV/atom (LLaMat/Gruver: 0.1).
    """
    ids = df["id"].astype(str).tolist()
    structs = [parse_structure(c) for c in df[cif_column]]
    rep = unique_representatives(ids, structs)
    sm = structure_matcher()
    eh = pd.to_numeric(df["e_hull"], errors="coerce").to_numpy(dtype=float)
    out = pd.DataFrame({"id": ids, "formula": [s.composition.reduced_formula if s else None for s in structs]})
    out["parsed"] = [s is not None for s in structs]
    out["duplicate_of"] = [None if rep[i] == i else rep[i] for i in ids]
    out["unique"] = out["parsed"] & out["duplicate_of"].isna()
    if training is not None:
        out["novel"] = [bool(training.is_novel(s, sm)) if s is not None else False for s in structs]
        out["formula_in_training"] = [training.has_formula(s.composition.reduced_formula) if s else None for s in structs]
    else:
        out["novel"] = np.nan
    if chemical_systems is not None:
        out["chemsys_novel"] = [
            (frozenset(el.symbol for el in s.composition.elements) not in chemical_systems) if s else None for s in structs
        ]
    out["stable"] = np.nan_to_num(eh, nan=np.inf) <= e_hull_stable
    out["metastable"] = np.nan_to_num(eh, nan=np.inf) < e_hull_metastable
    novel = out["novel"].fillna(False).astype(bool)
    out["sun"] = out["stable"] & out["unique"] & novel
    out["msun"] = out["metastable"] & out["unique"] & novel
    return out


def sun_summary(flags: pd.DataFrame, *, n_generated: int, training_name: str | None = None,
                e_hull_stable: float = E_HULL_STABLE, e_hull_metastable: float = E_HULL_METASTABLE) -> dict:
    """Rates with numerators and the stated denominator (all generated samples)."""

    def r(col: str) -> dict:
        num = int(flags[col].fillna(False).astype(bool).sum()) if col in flags else 0
        return {"numerator": num, "denominator": int(n_generated),
                "rate": num / n_generated if n_generated else None}

    return {
        "denominator_is": "all generated samples",
        "n_generated": int(n_generated),
        "n_scored": int(len(flags)),
        "unique": r("unique"),
        "novel": r("novel"),
        "chemsys_novel": r("chemsys_novel"),
        "stable": {**r("stable"), "threshold_ev_atom": e_hull_stable},
        "metastable": {**r("metastable"), "threshold_ev_atom": e_hull_metastable},
        "sun": r("sun"),
        "msun": {**r("msun"), "note": "metastable (< threshold) & unique & novel"},
        "protocol": {
            "matcher": "pymatgen StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5), grouped by reduced formula",
            "novelty_reference": training_name,
            "compositional_novelty_reference": "MP-20 element-presence matrix, all splits (45,229 rows)",
            "structures_compared": "relaxed",
        },
    }
