"""Uniqueness and novelty of generated structures as written (no relaxation needed).

Sampling settings trade validity for diversity (a lower temperature writes more valid crystals and
more repeats of them), so a validity number means little without these two next to it:

* ``unique_as_generated``: valid samples that match no earlier valid sample, over all valid samples.
* ``novel_as_generated``: unique valid samples that match no structure of the training split of the
  reference's dataset (MP-20: the available train subset, n=8344), over all valid samples.

Both use pymatgen ``StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5)`` within one reduced formula,
the S.U.N. matcher (:func:`llamat_cif.metrics.matching.structure_matcher`), on the structures as
generated; the screen's S.U.N. rates compare *relaxed* structures and divide by all generated
samples instead. :func:`benchmark_training_set` picks the training set a benchmark measures
novelty against.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llamat_cif.metrics.matching import structure_matcher, unique_representatives
from llamat_cif.metrics.metric import Metric, rate
from llamat_cif.metrics.sources import StructureSet, load_structure_set, registry_split
from llamat_cif.protocol import matcher_label


def uniqueness_novelty(cifs: Sequence[str], mask: np.ndarray, training=None) -> dict[str, Metric]:
    """``{"unique_as_generated": ..., "novel_as_generated": ...}`` over the samples where ``mask``.

    Args:
        cifs: CIF text per generated sample.
        mask: which samples count (the valid ones); the denominator is ``mask.sum()``.
        training: a :class:`llamat_cif.metrics.sun.TrainingSet` for novelty; None skips novelty.
    """
    from llamat_cif.cif import read_cif_or_none

    idx = np.flatnonzero(np.asarray(mask, dtype=bool))
    ids = [str(i) for i in idx]
    structs = [read_cif_or_none(cifs[i]) for i in idx]
    sm = structure_matcher()
    rep = unique_representatives(ids, structs, matcher=sm)
    unique = [s is not None and rep[i] == i for i, s in zip(ids, structs, strict=True)]
    proto = {"matcher": f"pymatgen {matcher_label(sm)}, within one reduced formula",
             "structures_compared": "as generated (unrelaxed)"}
    out = {"unique_as_generated": rate("unique_as_generated", sum(unique), len(idx), "valid generated",
                                       protocol=proto)}
    if training is not None:
        novel = [u and training.is_novel(s, sm) for u, s in zip(unique, structs, strict=True)]
        out["novel_as_generated"] = rate("novel_as_generated", sum(novel), len(idx), "valid generated",
                                         protocol={**proto, "novelty_reference": training.name,
                                                   "counted": "unique and novel"})
    return out


def training_set_for(reference: str, data_dir=None):
    """``(training set, None)`` for the train split of the reference's dataset (``mp20-test`` -> MP-20
    train), or ``(None, reason)`` where that split is not on disk."""
    from llamat_cif.data import DataError
    from llamat_cif.metrics.sun import TrainingSet

    dataset = reference.split("-")[0]
    try:
        return TrainingSet.from_split(dataset, "train", data_dir), None
    except DataError as exc:
        return None, str(exc)


def benchmark_training_set(train: str | None, reference: StructureSet, *, data_dir=None, cache_dir=None):
    """``(TrainingSet, None)`` for novelty and S.U.N. of a benchmark, or ``(None, reason)``.

    Args:
        train: a registry split or any input :func:`~llamat_cif.metrics.sources.load_structure_set`
            reads (``--train``); None: the train split of a registry reference's dataset.
        reference: the benchmark's reference set.
        data_dir, cache_dir: overrides of the data folder and the structure-table cache.
    """
    from llamat_cif.data import DataError
    from llamat_cif.metrics.properties import structure_table
    from llamat_cif.metrics.sun import TrainingSet

    if train:
        reg = registry_split(train)
        if reg is not None and not Path(train).exists():
            try:
                return TrainingSet.from_split(*reg, data_dir), None
            except DataError as exc:
                return None, str(exc)
        tset = load_structure_set(train, data_dir=data_dir)
        cifs = [c for c, e in zip(tset.table["cif"], tset.table["read_error"], strict=True) if not e]
        tab = structure_table(cifs, cache=cache_dir)
        ok = tab["parsed"].to_numpy(bool)
        return TrainingSet(tab.loc[ok, "formula"].tolist(), [c for c, k in zip(cifs, ok, strict=True) if k],
                           name=f"{tset.kind} {tset.name} (n={int(ok.sum())})"), None
    if reference.registry:
        return training_set_for(f"{reference.registry[0]}-train", data_dir)
    return None, "the reference is not a registry split and no training set (--train) was given"
