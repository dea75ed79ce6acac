"""How alignment judges a round: the stability reward, duplicates, chosen/rejected pairs, and the
per-round record and plots.

The reward is ``-min(E_hull, e_hull_cap)`` after a short relaxation with the ML potential; a sample
that does not parse, is invalid or fails to relax gets ``invalid_reward`` (below every relaxed
sample). A sample that matches a training structure (not novel), an earlier sample of the round
(not unique), with ``cross_round_unique`` a sample that won a pair in an earlier round (a repeat),
or, with ``family_share``, the would-be winner of a structure family that already holds its share
of the run's winners (:func:`cap_families`) is *ineligible*: it never wins a pair. Per prompt, the
best eligible sample is *chosen* against up to ``pairs_per_prompt`` others, worst first, that are
ineligible or at least ``pair_margin`` eV/atom worse; a prompt with no eligible sample gives no pair. See
:mod:`llamat_cif.train.align` for the round.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from llamat_cif.train.config import AlignConfig

#: winners a structure family may always hold, whatever its share (see :func:`cap_families`)
FAMILY_FLOOR = 2

# ------------------------------------------------------------------------------------ rewards


class StabilityReward:
    """The default scorer: validity, a short relaxation, E_hull on the MP-20 hull, novelty.

    Args:
        config: the run settings (potential, relaxation, reward shape).
        training: novelty reference (:class:`~llamat_cif.metrics.sun.TrainingSet`).
        data_dir: data root holding ``hull/`` (``$LLAMAT_CIF_DATA`` by default).
    """

    def __init__(self, config: AlignConfig, training, data_dir: str | Path | None = None, potential=None):
        from llamat_cif.stability.hull import Hull
        from llamat_cif.stability.pipeline import check_hull_compatible
        from llamat_cif.stability.potentials import load_potential
        from llamat_cif.stability.relax import RelaxConfig

        self.config = config
        self.training = training
        self.potential = potential or load_potential(config.potential, config.device)
        self.hull = Hull.from_data_dir(data_dir)
        check_hull_compatible(self.potential, self.hull, is_mp_reference=True)
        self.relax = RelaxConfig(fmax=config.fmax, max_steps=config.relax_steps,
                                 time_limit_s=config.relax_time_limit_s)

    def __getstate__(self) -> dict:
        # a scoring worker loads its own copy of the potential (torch models do not travel well)
        return {**self.__dict__, "potential": None}

    def __setstate__(self, state: dict) -> None:
        from llamat_cif.stability.potentials import load_potential

        self.__dict__.update(state)
        self.potential = load_potential(self.config.potential, self.config.device)

    def protocol(self) -> dict:
        c = self.config
        return {"reward": f"-min(E_hull, {c.e_hull_cap}) eV/atom after a short relaxation; "
                          f"invalid / unparsed / failed relaxation: {c.invalid_reward}",
                "eligible": "CDVAE-valid, relaxed, novel (no StructureMatcher match in the training set) "
                            "and unique within the round (see align_config for the cross-round and family rules)",
                "relax": self.relax.protocol(), "potential": self.potential.protocol(),
                "hull": self.hull.protocol(), "training": self.training.name}

    def score_one(self, sid: str, text: str, fmt: str = "cif", target_formula: str | None = None) -> dict:
        """Score one document (not yet judged for uniqueness: see :func:`mark_duplicates`)."""
        from llamat_cif.cif import read_cif
        from llamat_cif.stability.pipeline import score_row
        from llamat_cif.stability.relax import relax_structure
        from llamat_cif.validators import validate_one

        c = self.config
        v = validate_one(text, fmt=fmt, id=sid, target_formula=target_formula or None, keep_cif=True)
        row = {"id": sid, "valid": bool(v["valid"]), "structurally_valid": bool(v["structurally_valid"]),
               "compositionally_valid": bool(v["compositionally_valid"]), "formula": None, "n_elements": 0,
               "elements": "", "e_hull": math.nan, "relax_steps": 0, "relax_wall_s": 0.0, "converged": False,
               "novel": False, "relaxed_cif": None, "error": v.get("error") or None}
        cif = v.get("cif")
        if not cif:
            row["error"] = row["error"] or "does not parse"
            return _finish(row, c)
        s = read_cif(cif)
        comp = s.composition
        row.update(formula=comp.reduced_formula, n_elements=len(comp.elements),
                   elements=" ".join(sorted(el.symbol for el in comp.elements)))
        if not row["valid"]:
            return _finish(row, c)
        r = score_row(relax_structure(s, self.potential, self.relax, sid=sid), self.hull, self.potential)
        row.update(e_hull=float(r.get("e_hull", math.nan)), relax_steps=int(r.get("n_steps") or 0),
                   relax_wall_s=float(r.get("wall_s") or 0.0), converged=bool(r.get("converged")),
                   relaxed_cif=r.get("relaxed_cif"), error=r.get("error") or None)
        relaxed = read_cif(r["relaxed_cif"]) if r.get("relaxed_cif") else s
        row["novel"] = bool(self.training.is_novel(relaxed))
        return _finish(row, c)

    def __call__(self, samples: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame([self.score_one(r["id"], r["text"], r.get("fmt") or "cif", r.get("target_formula"))
                             for r in samples.to_dict("records")])


def _finish(row: dict, c: AlignConfig) -> dict:
    eh = row["e_hull"]
    ok = row["valid"] and not row["error"] and eh == eh  # NaN-safe
    row["reward"] = -min(float(eh), c.e_hull_cap) if ok else c.invalid_reward
    row["relaxed"] = bool(ok)
    row["eligible"] = bool(ok and row["novel"])  # uniqueness is judged over the round
    return row


def mark_duplicates(scores: pd.DataFrame, earlier: pd.DataFrame | None = None) -> pd.DataFrame:
    """Add ``unique`` / ``duplicate_of`` over the round (StructureMatcher, first occurrence wins,
    relaxed CIF where there is one); a duplicate is not eligible.

    With ``earlier`` (``id``, ``relaxed_cif`` of the samples that won pairs in earlier rounds), a sample
    that matches one of them gets ``repeat_of`` (that id) and is not eligible either: a crystal the
    policy has already been taught cannot win again, so the update keeps rewarding new ones instead of
    sharpening the model onto a few winners (``unique`` stays the within-round judgement).
    """
    from llamat_cif.cif import read_cif_or_none
    from llamat_cif.metrics.matching import unique_representatives

    df = scores.sort_values("id").reset_index(drop=True)
    cif = df["relaxed_cif"] if "relaxed_cif" in df else pd.Series([None] * len(df))
    valid = df["valid"].astype(bool) if "valid" in df else pd.Series([True] * len(df))
    structs = [read_cif_or_none(c) if ok else None for c, ok in zip(cif, valid, strict=True)]
    rep = unique_representatives(df["id"].astype(str).tolist(), structs)
    df["duplicate_of"] = [None if rep[i] == i else rep[i] for i in df["id"].astype(str)]
    df["unique"] = df["duplicate_of"].isna()
    df["repeat_of"] = None
    if earlier is not None and len(earlier):
        # earlier winners first: a sample matching one maps to it (the same grouping as above)
        e = earlier.sort_values("id")
        e_ids = e["id"].astype(str).tolist()
        e_structs = [read_cif_or_none(c) if isinstance(c, str) else None for c in e["relaxed_cif"]]
        ids = df["id"].astype(str).tolist()
        both = unique_representatives(e_ids + ids, e_structs + structs)
        known = set(e_ids)
        df["repeat_of"] = [both[i] if both[i] in known else None for i in ids]
    df["eligible"] = df["eligible"].astype(bool) & df["unique"] & df["repeat_of"].isna()
    return df


def cap_families(samples: pd.DataFrame, scores: pd.DataFrame, earlier: pd.DataFrame | None, *,
                 share: float, floor: int = FAMILY_FLOOR) -> pd.DataFrame:
    """Add ``prototype`` (structure family of the relaxed crystal, see
    :func:`~llamat_cif.metrics.properties.prototype_label`) and ``family_capped``; a capped sample is
    not eligible.

    No family may hold more than ``share`` of the run's winners (at least ``floor`` are always
    allowed): prompts are visited in the order :func:`build_pairs` visits them, each prompt's
    would-be winner (best eligible) is counted against the winners of earlier rounds (``earlier``,
    ``id`` and ``relaxed_cif``) and of the prompts before it, and a would-be winner whose family is
    full is capped, so that the next eligible sample of the prompt is considered. Barring single
    crystals (:func:`mark_duplicates`) does not stop a policy that collapses onto one family (every
    new rare-earth-In-Ag composition is a new crystal); this does. ``share`` <= 0 or >= 1 turns it off
    (prototypes are still recorded).
    """
    from llamat_cif.cif import read_cif_or_none
    from llamat_cif.metrics.properties import prototype_label

    def label(cif) -> str | None:
        s = read_cif_or_none(cif) if isinstance(cif, str) else None
        return prototype_label(s) if s is not None else None

    df = scores.copy()
    ok = df["valid"].astype(bool) if "valid" in df else pd.Series(True, index=df.index)
    cifs = df["relaxed_cif"] if "relaxed_cif" in df else pd.Series(None, index=df.index)
    df["prototype"] = [label(c) if v else None for c, v in zip(cifs, ok, strict=True)]
    df["family_capped"] = False
    if not 0.0 < share < 1.0:
        return df
    counts = Counter(label(c) for c in (earlier["relaxed_cif"] if earlier is not None and len(earlier) else []))
    counts.pop(None, None)
    n_won = sum(counts.values())
    prompt_of = samples.set_index("id")["prompt"]
    df["_prompt"] = df["id"].map(prompt_of)
    for _, g in df.groupby("_prompt", sort=True):
        for i in g[g["eligible"]].sort_values(["reward", "id"], ascending=[False, True]).index:
            fam = df.at[i, "prototype"]
            if fam is not None and counts[fam] + 1 > max(floor, int(share * (n_won + 1))):
                df.at[i, "family_capped"] = True
                df.at[i, "eligible"] = False
                continue
            counts[fam] += 1
            n_won += 1
            break
    return df.drop(columns="_prompt")


def earlier_winners(out: Path, round_index: int) -> pd.DataFrame:
    """``id`` and ``relaxed_cif`` of every sample chosen in a pair in rounds before ``round_index``
    of the run folder ``out`` (read from each round's ``pairs.parquet`` and ``scores.parquet``; a
    round scored without structures contributes none)."""
    frames = []
    for r in range(round_index):
        rdir = Path(out) / f"round_{r:02d}"
        if not (rdir / "pairs.parquet").is_file():
            continue
        pairs = pd.read_parquet(rdir / "pairs.parquet")
        if not len(pairs):
            continue
        sc = pd.read_parquet(rdir / "scores.parquet")
        if "relaxed_cif" in sc:  # a scorer without structures (tests' cheap rewards) has nothing to match
            frames.append(sc.loc[sc["id"].isin(set(pairs["chosen"])), ["id", "relaxed_cif"]])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["id", "relaxed_cif"])


def build_pairs(samples: pd.DataFrame, scores: pd.DataFrame, *, margin: float, per_prompt: int) -> pd.DataFrame:
    """Chosen/rejected pairs within each prompt (see the module docstring for the rule)."""
    df = samples.merge(scores[["id", "reward", "eligible"]], on="id")
    out = []
    for prompt, g in df.groupby("prompt", sort=True):
        winners = g[g["eligible"]].sort_values(["reward", "id"], ascending=[False, True])
        if winners.empty:
            continue
        best = winners.iloc[0]
        rivals = g[(g["id"] != best["id"]) & (~g["eligible"] | (g["reward"] <= best["reward"] - margin))]
        rivals = rivals.sort_values(["eligible", "reward", "id"], ascending=[True, True, True]).head(per_prompt)
        for _, r in rivals.iterrows():
            out.append({"prompt": prompt, "chosen": best["id"], "rejected": r["id"],
                        "reward_chosen": float(best["reward"]), "reward_rejected": float(r["reward"]),
                        "rejected_eligible": bool(r["eligible"])})
    return pd.DataFrame(out, columns=["prompt", "chosen", "rejected", "reward_chosen", "reward_rejected",
                                      "rejected_eligible"])


# ------------------------------------------------------------------------------------ record


def round_record(scores: pd.DataFrame, pairs: pd.DataFrame, cfg: AlignConfig,
                 train_n_el: np.ndarray | None) -> dict:
    """Per-round statistics, every rate with its count and denominator."""
    from scipy.stats import wasserstein_distance

    n = len(scores)
    valid = scores[scores["valid"].astype(bool)] if "valid" in scores else scores
    rew = scores["reward"].to_numpy(dtype=float)
    eh = pd.to_numeric(scores.get("e_hull", pd.Series(dtype=float)), errors="coerce").to_numpy(dtype=float)

    def cnt(mask) -> dict:
        k = int(np.sum(mask))
        return {"n": k, "of": n, "rate": round(k / n, 4) if n else None}

    rec = {"samples": n, "reward_mean": float(np.mean(rew)) if n else None,
           "reward_quantiles": {str(q): float(np.quantile(rew, q / 100)) for q in (10, 25, 50, 75, 90)} if n else {},
           "valid": cnt(scores.get("valid", pd.Series([True] * n)).astype(bool)),
           "relaxed": cnt(scores.get("relaxed", pd.Series([True] * n)).astype(bool)),
           "metastable": cnt(np.nan_to_num(eh, nan=np.inf) < cfg.metastable),
           "stable": cnt(np.nan_to_num(eh, nan=np.inf) <= 0.0),
           "eligible": cnt(scores["eligible"].astype(bool)),
           "pairs": int(len(pairs))}
    if "repeat_of" in scores:
        rec["repeats"] = cnt(scores["repeat_of"].notna())
    if "family_capped" in scores:
        rec["family_capped"] = cnt(scores["family_capped"].astype(bool))
    if "prototype" in valid and len(valid):
        fam = valid["prototype"].dropna().value_counts()
        rec["prototypes"] = {"distinct": int(len(fam)), "of_valid": len(valid),
                             "largest": {"prototype": fam.index[0], "n": int(fam.iloc[0])} if len(fam) else None}
        won = scores.loc[scores["id"].isin(set(pairs["chosen"])) if len(pairs) else [], "prototype"].dropna()
        rec["prototypes"]["winners"] = {"distinct": int(won.nunique()), "of": int(len(won))}
    nv = len(valid)
    for col in ("unique", "novel"):
        if col in valid:
            k = int(valid[col].astype(bool).sum())
            rec[col] = {"n": k, "of_valid": nv, "rate": round(k / nv, 4) if nv else None}
    if "n_elements" in valid and nv and train_n_el is not None:
        rec["w_n_el"] = float(wasserstein_distance(valid["n_elements"].to_numpy(dtype=float), train_n_el))
    if "elements" in valid:
        rec["elements"] = dict(sorted(Counter(e for s in valid["elements"] for e in str(s).split()).items()))
        rec["distinct_elements"] = len(rec["elements"])
    return rec


def plot_rounds(records: list[dict], out: Path) -> list[Path]:
    """``curves.png`` (reward, metastable/stable, unique/novel/valid, W(N_el) per round) and
    ``elements.png`` (element counts among valid samples, one row per round)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not records:
        return []
    r = [rec["round"] for rec in records]
    fig, ax = plt.subplots(2, 2, figsize=(10, 7))
    # keys are strings (as they come back from record.json) so resumed and fresh rounds plot alike
    q = {k: [rec["reward_quantiles"].get(str(k), np.nan) for rec in records] for k in (10, 25, 50, 75, 90)}
    ax[0, 0].fill_between(r, q[10], q[90], alpha=0.15, label="10–90 %")
    ax[0, 0].fill_between(r, q[25], q[75], alpha=0.3, label="25–75 %")
    ax[0, 0].plot(r, [rec["reward_mean"] for rec in records], "o-", label="mean")
    ax[0, 0].set(title="reward (−E_hull, capped)", xlabel="round")
    ax[0, 0].legend(fontsize=8)
    for key in ("metastable", "stable"):
        ax[0, 1].plot(r, [rec[key]["rate"] for rec in records], "o-", label=key)
    ax[0, 1].set(title="short-relaxation stability (all samples)", xlabel="round", ylim=(0, 1))
    ax[0, 1].legend(fontsize=8)
    for key in ("valid", "unique", "novel"):
        if key in records[0]:
            ax[1, 0].plot(r, [rec[key]["rate"] for rec in records], "o-", label=key)
    ax[1, 0].set(title="valid (all) · unique, novel (of valid)", xlabel="round", ylim=(0, 1.05))
    ax[1, 0].legend(fontsize=8)
    ax[1, 1].plot(r, [rec.get("w_n_el", np.nan) for rec in records], "o-")
    ax[1, 1].set(title="W(N_el) to the training set", xlabel="round")
    for a in ax.flat:
        a.set_xticks(r)
    fig.tight_layout()
    paths = [out / "curves.png"]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)
    from pymatgen.core import Element

    els = sorted({e for rec in records for e in rec.get("elements", {})}, key=lambda e: Element(e).Z)
    if els:
        m = np.array([[rec.get("elements", {}).get(e, 0) for e in els] for rec in records], dtype=float)
        fig, ax = plt.subplots(figsize=(max(8, 0.18 * len(els)), 1 + 0.4 * len(records)))
        im = ax.imshow(m, aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(els)), els, fontsize=6, rotation=90)
        ax.set_yticks(range(len(records)), [f"round {x}" for x in r], fontsize=8)
        ax.set_title("element counts among valid samples")
        fig.colorbar(im, ax=ax, fraction=0.02)
        fig.tight_layout()
        paths.append(out / "elements.png")
        fig.savefig(paths[1], dpi=120)
        plt.close(fig)
    return paths
