"""Stability alignment: finetune a generator on its own samples, rewarded by relaxed stability.

Iterative DPO (direct preference optimisation, Rafailov et al. 2023) with the toolkit's own
pipeline as the judge. Each round:

1. **prompts** — ``prompts`` prompts, a share ``conditional`` of them formula headers drawn from the
   training compositions (``dataset`` train split), the rest unconditional;
2. **samples** — ``samples_per_prompt`` constrained samples per prompt from the current policy,
   through the same grammar, physics rules and seeding as ``llamat-cif generate``
   (:func:`llamat_cif.sampling.sample.draw_batch`); the exact token ids drawn are kept;
3. **scores** — every sample validated (CDVAE structural + compositional), relaxed briefly with the
   ML potential (``relax_steps`` FIRE steps, ``fmax``) and placed on the MP-20 hull; the reward is
   ``-min(E_hull, e_hull_cap)``, and a sample that does not parse, is invalid or fails to relax
   gets ``invalid_reward`` (below every relaxed sample). A sample that matches a training structure
   (not novel) or an earlier sample of the round (not unique) is *ineligible*: it never wins a pair;
4. **pairs** — per prompt, the best eligible sample is *chosen* against up to
   ``pairs_per_prompt`` others, worst first, that are ineligible or at least ``pair_margin``
   eV/atom worse; a prompt with no eligible sample gives no pair;
5. **update** — ``trl``'s ``DPOTrainer`` on those pairs (sigmoid DPO loss plus ``sft_weight`` x
   the NLL of the chosen sample, an RPO-style anchor that keeps the chosen text likely), with the
   *pre-alignment* model as the fixed reference (KL anchor), so every round is pulled back towards
   the model that writes valid crystal text.

Why DPO rather than GRPO/RLOO: the reward (a relaxation, seconds per sample on a CPU) is far more
expensive than the update, so every sample must be drawn by our constrained sampler (trl's online
trainers generate with ``model.generate`` and their own loop) and reused as pairs; DPO learns from
such offline pairs, needs no value model, and trl's trainer brings the loss, the reference
handling and peft support.

Everything is written as it goes and a rerun of the same ``out_dir`` resumes where it stopped:
``round_NN/samples/`` and ``round_NN/scores/`` hold one parquet part per prompt (written to a
temporary name and renamed, so a part is whole or absent), then ``pairs.parquet``, the updated
``model/`` and ``record.json``; a round is done when its ``record.json`` exists. ``rounds.jsonl``
and ``curves.png`` / ``elements.png`` summarise all rounds.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from llamat_cif.protocol import CDVAE_MIN_DISTANCE, E_HULL_METASTABLE

#: reward of a sample that is invalid, does not parse or fails to relax (below any relaxed sample)
INVALID_REWARD = -2.0


@dataclass(frozen=True)
class AlignConfig:
    """One alignment run (written to ``out_dir/align_config.json``)."""

    out_dir: str
    model: str = "default"  # shipped name, model folder or peft adapter folder
    rounds: int = 4
    prompts: int = 16  # prompts per round
    samples_per_prompt: int = 6
    conditional: float = 0.5  # share of prompts that are formula headers from the training set
    dataset: str = "mp20"  # training compositions for prompts, and the novelty reference (train split)
    seed: int = 0
    temperature: float | None = None  # None: the model's recommended sampling (T 0.7 for the shipped one)
    top_p: float | None = None
    max_new_tokens: int = 1000
    # reward: a short relaxation with an ML potential, then E_hull on the MP-20 hull
    potential: str = "chgnet"
    relax_steps: int = 100  # FIRE steps of the short relaxation
    fmax: float = 0.1  # eV/Å
    relax_time_limit_s: float = 120.0
    e_hull_cap: float = 1.0  # reward = -min(E_hull, cap), eV/atom
    invalid_reward: float = INVALID_REWARD
    metastable: float = E_HULL_METASTABLE  # eV/atom, for the per-round record
    # pairs and DPO update
    pair_margin: float = 0.05  # eV/atom: a relaxed, eligible rival loses only when this much worse
    pairs_per_prompt: int = 3
    beta: float = 0.1
    sft_weight: float = 0.2
    lr: float = 3e-5
    epochs: int = 2
    batch_size: int = 8
    lora: bool = False  # train a fresh LoRA adapter instead of all weights (adapters always train as adapters)
    device: str | None = None
    threads: int | None = 1

    def __post_init__(self) -> None:
        for name in ("rounds", "prompts", "samples_per_prompt", "epochs", "batch_size", "pairs_per_prompt",
                     "relax_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.samples_per_prompt < 2:
            raise ValueError("samples_per_prompt must be >= 2 (pairs are formed within a prompt)")
        if not 0.0 <= self.conditional <= 1.0:
            raise ValueError(f"conditional must be in [0, 1], got {self.conditional}")
        if self.beta <= 0 or self.lr <= 0 or self.sft_weight < 0 or self.pair_margin < 0:
            raise ValueError("beta and lr must be > 0, sft_weight and pair_margin >= 0")
        if self.e_hull_cap <= 0 or self.invalid_reward >= -self.e_hull_cap:
            raise ValueError("e_hull_cap must be > 0 and invalid_reward below -e_hull_cap")


#: settings a resumed run may change (the number of rounds: a finished run can be extended)
RESUMABLE_CHANGES = ("rounds", "device", "threads")

#: a scorer maps a round's samples (one row per sample: id, prompt, target_formula, text, cif, ...)
#: to score rows with at least ``id``, ``reward`` (float) and ``eligible`` (bool)
Scorer = Callable[[pd.DataFrame], pd.DataFrame]


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

    def protocol(self) -> dict:
        c = self.config
        return {"reward": f"-min(E_hull, {c.e_hull_cap}) eV/atom after a short relaxation; "
                          f"invalid / unparsed / failed relaxation: {c.invalid_reward}",
                "eligible": "CDVAE-valid, relaxed, novel (no StructureMatcher match in the training set) "
                            "and unique within the round",
                "relax": self.relax.protocol(), "potential": self.potential.protocol(),
                "hull": self.hull.protocol(), "training": self.training.name}

    def score_one(self, sid: str, text: str, fmt: str = "cif", target_formula: str | None = None) -> dict:
        """Score one document (not yet judged for uniqueness: see :func:`mark_duplicates`)."""
        from pymatgen.core import Structure

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
        s = Structure.from_str(cif, fmt="cif")
        comp = s.composition
        row.update(formula=comp.reduced_formula, n_elements=len(comp.elements),
                   elements=" ".join(sorted(el.symbol for el in comp.elements)))
        if not row["valid"]:
            return _finish(row, c)
        r = score_row(relax_structure(s, self.potential, self.relax, sid=sid), self.hull, self.potential)
        row.update(e_hull=float(r.get("e_hull", math.nan)), relax_steps=int(r.get("n_steps") or 0),
                   relax_wall_s=float(r.get("wall_s") or 0.0), converged=bool(r.get("converged")),
                   relaxed_cif=r.get("relaxed_cif"), error=r.get("error") or None)
        relaxed = Structure.from_str(r["relaxed_cif"], fmt="cif") if r.get("relaxed_cif") else s
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


def mark_duplicates(scores: pd.DataFrame) -> pd.DataFrame:
    """Add ``unique`` / ``duplicate_of`` over the round (StructureMatcher, first occurrence wins,
    relaxed CIF where there is one); a duplicate is not eligible."""
    from llamat_cif.metrics.sun import parse_structure, unique_representatives

    df = scores.sort_values("id").reset_index(drop=True)
    cif = df["relaxed_cif"] if "relaxed_cif" in df else pd.Series([None] * len(df))
    valid = df["valid"].astype(bool) if "valid" in df else pd.Series([True] * len(df))
    structs = [parse_structure(c) if ok else None for c, ok in zip(cif, valid, strict=True)]
    rep = unique_representatives(df["id"].astype(str).tolist(), structs)
    df["duplicate_of"] = [None if rep[i] == i else rep[i] for i in df["id"].astype(str)]
    df["unique"] = df["duplicate_of"].isna()
    df["eligible"] = df["eligible"].astype(bool) & df["unique"]
    return df


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


# ------------------------------------------------------------------------------------ files


def _write_part(df: pd.DataFrame, path: Path) -> None:
    """Write a parquet part atomically (temporary name, then rename): a part is whole or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _read_parts(folder: Path) -> pd.DataFrame:
    parts = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True) if parts else pd.DataFrame()


def _check_resume(out: Path, cfg: AlignConfig) -> None:
    saved = out / "align_config.json"
    if not saved.is_file():
        return
    old = json.loads(saved.read_text())
    diff = {k: (old.get(k), v) for k, v in asdict(cfg).items()
            if k not in RESUMABLE_CHANGES and old.get(k) != v}
    if diff:
        raise ValueError(f"{out} holds an alignment run with other settings {diff}; use a new --out")


# ------------------------------------------------------------------------------------ prompts


def round_prompts(cfg: AlignConfig, round_index: int, formulas: Sequence[str]) -> list[dict]:
    """The prompts of one round: ``{"prompt": "p00", "target_formula": "LiFePO4" or ""}``, seeded by
    ``(seed, round)``; formulas drawn uniformly over training structures."""
    rng = np.random.default_rng([cfg.seed, round_index, 7])
    n_cond = int(round(cfg.prompts * cfg.conditional))
    picks = rng.choice(len(formulas), size=n_cond, replace=len(formulas) < n_cond) if n_cond else []
    targets = [str(formulas[i]) for i in picks] + [""] * (cfg.prompts - n_cond)
    order = rng.permutation(cfg.prompts)
    return [{"prompt": f"p{k:02d}", "target_formula": targets[j]} for k, j in enumerate(order)]


# ------------------------------------------------------------------------------------ model


def sequence_logps(model, ids: Sequence[Sequence[int]], bos_id: int) -> np.ndarray:
    """Sum of log-probabilities of each token sequence after BOS under ``model`` (no grad)."""
    import torch

    out = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for seq in ids:
            x = torch.tensor([[bos_id, *seq]], device=device)
            logits = model(input_ids=x).logits[0, :-1].float()
            lp = torch.log_softmax(logits, -1).gather(1, x[0, 1:, None])[:, 0]
            out.append(float(lp.sum()))
    return np.asarray(out)


def _load_policy(cfg: AlignConfig, folder: str | Path, trainable: bool):
    """Load a generator in fp32 (small DPO steps vanish in bf16); an adapter stays an adapter,
    trainable when asked; ``cfg.lora`` wraps a plain model in a fresh LoRA adapter."""
    from llamat_cif.model import load_generator, resolve_model_path

    folder = resolve_model_path(folder)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model, tok = load_generator(str(folder), device=cfg.device, dtype="fp32")
    is_peft = hasattr(model, "peft_config")
    if is_peft:  # saved adapters must name their base by absolute path (relative names break on copy)
        from llamat_cif.model import adapter_base_path

        model.peft_config["default"].base_model_name_or_path = str(adapter_base_path(Path(folder)))
    if trainable:
        if is_peft:
            for n, p in model.named_parameters():
                p.requires_grad = "lora_" in n
        elif cfg.lora:
            from peft import LoraConfig, get_peft_model

            from llamat_cif.train import LoraSettings

            lo = LoraSettings()
            model.config._name_or_path = str(folder)
            model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=lo.r, lora_alpha=lo.alpha,
                                                     lora_dropout=lo.dropout, target_modules=list(lo.target_modules)))
    return model, tok


def _save_policy(model, tokenizer, source: Path, dest: Path, cfg: AlignConfig) -> None:
    """Save the round's policy (fp32 weights or the adapter) with the tokenizer and the source's
    sampling and training records, to a temporary folder renamed into place."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    for name in ("generation_config.json", "train_config.json"):
        if (source / name).is_file() and not (tmp / name).is_file():
            shutil.copy(source / name, tmp / name)
    (tmp / "align_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def _dpo_update(model, ref_model, tokenizer, samples: pd.DataFrame, pairs: pd.DataFrame, cfg: AlignConfig,
                round_index: int, work: Path) -> dict:
    """One DPO pass over the round's pairs with trl; returns the trainer's last logged metrics."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from transformers.utils import logging as hf_logging
    from trl import DPOConfig, DPOTrainer

    class _PreTokenized(DPOTrainer):
        """trl's trainer on the exact token ids the sampler drew (no re-tokenization of text)."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    ids = dict(zip(samples["id"], samples["token_ids"], strict=True))
    bos = [tokenizer.bos_token_id]
    ds = Dataset.from_list([{"prompt_ids": bos, "chosen_ids": [int(t) for t in ids[p.chosen]],
                             "rejected_ids": [int(t) for t in ids[p.rejected]]} for p in pairs.itertuples()])

    use_cpu = next(model.parameters()).device.type == "cpu"
    hf_logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        args = DPOConfig(
            output_dir=str(work), per_device_train_batch_size=cfg.batch_size, num_train_epochs=cfg.epochs,
            learning_rate=cfg.lr, beta=cfg.beta, loss_type=["sigmoid", "sft"],
            loss_weights=[1.0, cfg.sft_weight], lr_scheduler_type="constant", warmup_steps=0, report_to=[],
            save_strategy="no", logging_steps=1, use_cpu=use_cpu, disable_tqdm=True,
            seed=int(np.random.SeedSequence([cfg.seed, round_index]).generate_state(1)[0] % 2**31),
            max_length=cfg.max_new_tokens + 2, remove_unused_columns=False, bf16=False, fp16=False)
        trainer = _PreTokenized(model=model, ref_model=ref_model, args=args, train_dataset=ds,
                                processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)  # the round record keeps the metrics
        trainer.train()
    model.eval()
    logs = [r for r in trainer.state.log_history if "loss" in r]
    last = logs[-1] if logs else {}
    keys = ("loss", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected")
    return {"steps": int(trainer.state.global_step), **{k: float(last[k]) for k in keys if k in last},
            "first_loss": float(logs[0]["loss"]) if logs else None}


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


# ------------------------------------------------------------------------------------ the loop


def _sampling(cfg: AlignConfig, model) -> dict:
    """Sampling settings exactly as ``llamat-cif generate`` resolves them."""
    from llamat_cif.sampling.config import (
        recommended_sampling,
        resolve_physics,
        resolve_steer,
        resolve_volume_steer,
        window_tuple,
    )
    from llamat_cif.sampling.fields import site_lines_for

    t, p = recommended_sampling(model)
    f, win = resolve_physics(None, "auto")
    return {"temperature": t if cfg.temperature is None else cfg.temperature,
            "top_p": p if cfg.top_p is None else cfg.top_p,
            "physics": dict(contact_ratio=f, volume_window=window_tuple(win),
                            steer_ratio=resolve_steer(None, f),
                            volume_steer=window_tuple(resolve_volume_steer(None, win))),
            "max_lines": site_lines_for(cfg.max_new_tokens)}


def _sample_prompt(model, tokenizer, cfg: AlignConfig, settings: dict, prompt: dict, round_index: int,
                   k: int) -> pd.DataFrame:
    from llamat_cif.sampling.config import parse_formula
    from llamat_cif.sampling.engine import Stats, Vocab
    from llamat_cif.sampling.fields import Conditions
    from llamat_cif.sampling.grammars import GRAMMARS
    from llamat_cif.sampling.sample import decode_sample, draw_batch

    formula = prompt["target_formula"] or None
    cond = Conditions(formula=parse_formula(formula) if formula else None, spacegroup=None, min_distance=CDVAE_MIN_DISTANCE,
                      charge_balanced=False, max_lines=settings["max_lines"], **settings["physics"])
    n = cfg.samples_per_prompt
    new = draw_batch(model, tokenizer, size=n, seed=(cfg.seed, round_index, k), conditions=[cond] * n,
                     grammar=GRAMMARS["cif"], vocab=Vocab(tokenizer), stats=Stats(),
                     temperature=settings["temperature"], top_p=settings["top_p"],
                     max_new_tokens=cfg.max_new_tokens)
    rows = []
    for i in range(n):
        ids = [t for t in new[i].tolist() if t != tokenizer.pad_token_id]
        rows.append({"id": f"r{round_index:02d}-{prompt['prompt']}-{i:02d}", "round": round_index,
                     "prompt": prompt["prompt"], "target_formula": prompt["target_formula"], "fmt": "cif",
                     "token_ids": ids, **decode_sample(ids, tokenizer, max_new_tokens=cfg.max_new_tokens)})
    return pd.DataFrame(rows)


def run_align(cfg: AlignConfig, *, scorer: Scorer | None = None, data_dir: str | Path | None = None,
              progress: bool = True, training=None) -> list[dict]:
    """Run (or resume) the alignment rounds of ``cfg``; returns the per-round records.

    Args:
        cfg: run settings.
        scorer: replaces the stability reward (tests use a cheap deterministic one); the default is
            :class:`StabilityReward` against ``training``.
        data_dir: data root (training split, hull).
        progress: rich progress bars.
        training: novelty reference and prompt compositions (default: ``cfg.dataset`` train split).
    """
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from llamat_cif.model import resolve_model_path
    from llamat_cif.sampling.config import model_format

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(out, cfg)
    source = resolve_model_path(cfg.model)
    if model_format(source) != "cif":
        raise ValueError(f"{source} was trained on the {model_format(source)!r} representation; "
                         "alignment samples CIF documents")
    (out / "align_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if training is None:
        from llamat_cif.metrics.sun import TrainingSet

        training = TrainingSet.from_split(cfg.dataset, "train", data_dir=data_dir)
    formulas = training.formulas()
    from pymatgen.core import Composition

    train_n_el = np.array([len(Composition(f).elements) for f in formulas], dtype=float)
    if scorer is None:
        scorer = StabilityReward(cfg, training, data_dir=data_dir)
    done = [r for r in range(cfg.rounds) if (out / f"round_{r:02d}" / "record.json").is_file()]
    start = max(done) + 1 if done else 0
    policy_dir = out / f"round_{start - 1:02d}" / "model" if start else source
    ref_model = None
    model = tokenizer = None
    records = [json.loads((out / f"round_{r:02d}" / "record.json").read_text()) for r in done]
    cols = [TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(), TextColumn("{task.fields[note]}")]
    with Progress(*cols, disable=not progress) as bar:
        for r in range(start, cfg.rounds):
            if model is None:
                model, tokenizer = _load_policy(cfg, policy_dir, trainable=True)
                ref_model, _ = _load_policy(cfg, source, trainable=False)
                for p in ref_model.parameters():
                    p.requires_grad_(False)
            rdir = out / f"round_{r:02d}"
            prompts = round_prompts(cfg, r, formulas)
            settings = _sampling(cfg, model)
            t0 = time.time()
            task = bar.add_task(f"round {r} sample", total=len(prompts), note="")
            for k, pr in enumerate(prompts):
                part = rdir / "samples" / f"{pr['prompt']}.parquet"
                if not part.is_file():
                    _write_part(_sample_prompt(model, tokenizer, cfg, settings, pr, r, k), part)
                bar.update(task, advance=1)
            samples = _read_parts(rdir / "samples")
            t_sample = time.time() - t0
            task = bar.add_task(f"round {r} score", total=len(prompts), note="")
            for pr in prompts:
                part = rdir / "scores" / f"{pr['prompt']}.parquet"
                if not part.is_file():
                    _write_part(scorer(samples[samples["prompt"] == pr["prompt"]]), part)
                bar.update(task, advance=1)
            scores = mark_duplicates(_read_parts(rdir / "scores"))
            t_score = time.time() - t0 - t_sample
            pairs = build_pairs(samples, scores, margin=cfg.pair_margin, per_prompt=cfg.pairs_per_prompt)
            _write_part(pairs, rdir / "pairs.parquet")
            _write_part(scores, rdir / "scores.parquet")
            train_stats = {}
            if len(pairs):
                train_stats = _dpo_update(model, ref_model, tokenizer, samples, pairs, cfg, r, rdir / "trainer")
                shutil.rmtree(rdir / "trainer", ignore_errors=True)
            _save_policy(model, tokenizer, source, rdir / "model", cfg)
            rec = {"round": r, **round_record(scores, pairs, cfg, train_n_el), "dpo": train_stats,
                   "wall_s": {"sample": round(t_sample, 1), "score": round(t_score, 1),
                              "update": round(time.time() - t0 - t_sample - t_score, 1)},
                   "sampling": {k: settings[k] for k in ("temperature", "top_p")},
                   "protocol": scorer.protocol() if hasattr(scorer, "protocol") else {"scorer": repr(scorer)}}
            (rdir / "record.json").write_text(json.dumps(rec, indent=2, default=str))
            records.append(rec)
            with open(out / "rounds.jsonl", "w") as fh:
                for x in records:
                    fh.write(json.dumps({k: v for k, v in x.items() if k != "protocol"}, default=str) + "\n")
            plot_rounds(records, out)
            bar.console.log(f"round {r}: reward mean {rec['reward_mean']:.3f}, metastable "
                            f"{rec['metastable']['n']}/{rec['metastable']['of']}, pairs {rec['pairs']}")
    final = out / f"round_{cfg.rounds - 1:02d}" / "model"
    if final.is_dir():
        link = out / "final"
        tmp = out / "final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(final, tmp)
        shutil.rmtree(link, ignore_errors=True)
        os.replace(tmp, link)
    return records
