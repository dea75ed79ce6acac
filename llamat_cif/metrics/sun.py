"""S.U.N.: stable, unique and novel generated structures (MatterGen's definition).

* **Unique**: no earlier structure of the generated set matches it (pymatgen ``StructureMatcher``,
  default tolerances ``ltol=0.2, stol=0.3, angle_tol=5``: ``SUN_MATCHER`` in
  :mod:`llamat_cif.protocol`); comparisons only within one reduced formula
  (:func:`llamat_cif.metrics.matching.unique_representatives`), which is what makes it scale.
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

from llamat_cif.metrics.matching import structure_matcher, unique_representatives
from llamat_cif.paths import data_dir as resolve_data_dir
from llamat_cif.protocol import E_HULL_METASTABLE, E_HULL_STABLE, matcher_label

COMPOSITION_MATRIX = "hull/lemat_mp20_misc/mp20_compositions.npz"


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
        from llamat_cif.cif import read_cif_or_none
        from llamat_cif.data import get_dataset, load_split

        df = load_split(dataset, split, data_dir=data_dir)
        if "pretty_formula" in df.columns:
            formulas, cifs = df["pretty_formula"].astype(str).tolist(), df["cif"].tolist()
        else:
            parsed = [(read_cif_or_none(c), c) for c in df["cif"]]
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
            from llamat_cif.cif import read_cif_or_none

            self._parsed[formula] = [s for s in (read_cif_or_none(c) for c in self._cifs.get(formula, [])) if s is not None]
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
    from llamat_cif.cif import read_cif_or_none

    ids = df["id"].astype(str).tolist()
    structs = [read_cif_or_none(c) for c in df[cif_column]]
    sm = structure_matcher()
    rep = unique_representatives(ids, structs, matcher=sm)
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
                e_hull_stable: float = E_HULL_STABLE, e_hull_metastable: float = E_HULL_METASTABLE,
                matcher=None) -> dict:
    """Rates with numerators and the stated denominator (all generated samples).

    ``matcher`` is the ``StructureMatcher`` the flags were computed with (None: the S.U.N. preset
    :func:`sun_table` uses); the protocol records its tolerances.
    """

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
            "matcher": f"pymatgen {matcher_label(matcher or structure_matcher())}, grouped by reduced formula",
            "novelty_reference": training_name,
            "compositional_novelty_reference": "MP-20 element-presence matrix, all splits (45,229 rows)",
            "structures_compared": "relaxed",
        },
    }
