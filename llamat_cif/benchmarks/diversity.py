"""Uniqueness and novelty of generated structures as written (no relaxation needed).

Sampling settings trade validity for diversity (a lower temperature writes more valid crystals and
more repeats of them), so a validity number means little without these two next to it:

* ``unique_as_generated``: valid samples that match no earlier valid sample, over all valid samples.
* ``novel_as_generated``: unique valid samples that match no structure of the training split of the
  reference's dataset (MP-20: the available train subset, n=8344), over all valid samples.

Both use pymatgen ``StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5)`` within one reduced formula,
the S.U.N. matcher of :mod:`llamat_cif.stability.sun`, on the structures as generated; the screen's
S.U.N. rates compare *relaxed* structures and divide by all generated samples instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llamat_cif.benchmarks.metric import Metric, rate

MATCHER = "pymatgen StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5), within one reduced formula"


def uniqueness_novelty(cifs: Sequence[str], mask: np.ndarray, training=None) -> dict[str, Metric]:
    """``{"unique_as_generated": ..., "novel_as_generated": ...}`` over the samples where ``mask``.

    Args:
        cifs: CIF text per generated sample.
        mask: which samples count (the valid ones); the denominator is ``mask.sum()``.
        training: a :class:`llamat_cif.stability.sun.TrainingSet` for novelty; None skips novelty.
    """
    from llamat_cif.stability.sun import _matcher, _parse, unique_representatives

    idx = np.flatnonzero(np.asarray(mask, dtype=bool))
    ids = [str(i) for i in idx]
    structs = [_parse(cifs[i]) for i in idx]
    rep = unique_representatives(ids, structs)
    unique = [s is not None and rep[i] == i for i, s in zip(ids, structs, strict=True)]
    proto = {"matcher": MATCHER, "structures_compared": "as generated (unrelaxed)"}
    out = {"unique_as_generated": rate("unique_as_generated", sum(unique), len(idx), "valid generated",
                                       protocol=proto)}
    if training is not None:
        sm = _matcher()
        novel = [u and training.is_novel(s, sm) for u, s in zip(unique, structs, strict=True)]
        out["novel_as_generated"] = rate("novel_as_generated", sum(novel), len(idx), "valid generated",
                                         protocol={**proto, "novelty_reference": training.name,
                                                   "counted": "unique and novel"})
    return out


def training_set_for(reference: str, data_dir=None):
    """The training split of the reference's dataset (``mp20-test`` -> MP-20 train), or None with a reason."""
    from llamat_cif.stability.sun import TrainingSet

    dataset = reference.split("-")[0]
    try:
        if dataset == "mp20":
            return TrainingSet.mp20_train(data_dir), None
        from llamat_cif.data import load_split

        df = load_split(dataset, "train", data_dir=data_dir)
        from llamat_cif.benchmarks.properties import describe_cif

        formulas = [describe_cif(c).get("formula") for c in df["cif"]]
        keep = [i for i, f in enumerate(formulas) if f]
        return TrainingSet([formulas[i] for i in keep], [df["cif"].iloc[i] for i in keep],
                           name=f"{dataset} train (n={len(df)})"), None
    except Exception as exc:  # noqa: BLE001 - novelty is optional; the reason is recorded
        return None, f"no training split for {dataset!r}: {exc}"
