"""Stability alignment: finetune a generator on its own samples, rewarded by relaxed stability.

Iterative DPO (direct preference optimisation, Rafailov et al. 2023) with the toolkit's own
pipeline as the judge. Each round:

1. **prompts** — ``prompts`` prompts, a share ``conditional`` of them formula headers drawn from the
   training compositions (``dataset`` train split), the rest unconditional;
2. **samples** — ``samples_per_prompt`` constrained samples per prompt from the current policy,
   with every default of ``llamat-cif generate`` (grammar, physics rules and steering, dead-end
   redraws; :func:`_sampler`) and its seeding (:func:`llamat_cif.sampling.sample.draw_batch`); the
   exact token ids drawn are kept;
3. **scores** — every sample validated (CDVAE structural + compositional), relaxed briefly with the
   ML potential (``relax_steps`` FIRE steps, ``fmax``) and placed on the MP-20 hull; the reward is
   ``-min(E_hull, e_hull_cap)``, and a sample that does not parse, is invalid or fails to relax
   gets ``invalid_reward`` (below every relaxed sample). A sample that matches a training structure
   (not novel), an earlier sample of the round (not unique), with ``cross_round_unique`` (the
   default) a sample that won a pair in an earlier round (a repeat), or, with ``family_share`` (the
   default), a prompt's would-be winner from a structure family that already holds that share of
   the run's winners is *ineligible*: it never wins a pair.
   With ``score_workers`` > 0 a prompt's samples are scored in worker processes while the policy
   samples the next prompt;
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

The reward, pairs and round records live in :mod:`llamat_cif.train.align_scores`; loading,
updating and saving the policy in :mod:`llamat_cif.train.align_policy`; the settings
(:class:`~llamat_cif.train.config.AlignConfig`) in :mod:`llamat_cif.train.config`.

Everything is written as it goes and a rerun of the same ``out_dir`` resumes where it stopped:
``round_NN/samples.parts/`` and ``round_NN/scores.parts/`` hold one parquet part per prompt (part k =
prompt k, through :class:`llamat_cif.runs.RunStore`: a part is whole or absent), then
``scores.parquet`` (all prompts, duplicates marked), ``pairs.parquet``, the updated
``model/`` and ``record.json``; a round is done when its ``record.json`` exists. ``rounds.jsonl``
and ``curves.png`` / ``elements.png`` summarise all rounds. A finished run can be extended with
more rounds, and those rounds can have another number of prompts (:data:`RESUMABLE_CHANGES`).
:func:`branch_run` starts a new folder from a run's first rounds, to continue it under other settings.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from llamat_cif.runs import RunStore, write_json, write_parquet
from llamat_cif.train.align_policy import dpo_update, load_policy, save_policy
from llamat_cif.train.align_scores import (
    StabilityReward,
    build_pairs,
    cap_families,
    earlier_winners,
    mark_duplicates,
    plot_rounds,
    round_record,
)
from llamat_cif.train.config import AlignConfig

#: settings a resumed run may change (the number of rounds: a finished run can be extended; the
#: prompts per round: later rounds can be larger, each round's record keeps its own count; where and
#: how fast it runs)
RESUMABLE_CHANGES = ("rounds", "prompts", "device", "threads", "score_workers")
#: what a run folder written before a setting existed ran with (so it resumes unchanged)
LEGACY_SETTINGS = {"cross_round_unique": False, "family_share": 0.0}

#: a scorer maps a round's samples (one row per sample: id, prompt, target_formula, text, cif, ...)
#: to score rows with at least ``id``, ``reward`` (float) and ``eligible`` (bool)
Scorer = Callable[[pd.DataFrame], pd.DataFrame]


# ------------------------------------------------------------------------------------ files


def _check_resume(out: Path, cfg: AlignConfig) -> None:
    saved = out / "align_config.json"
    if not saved.is_file():
        return
    old = json.loads(saved.read_text())
    diff = {k: (old.get(k), v) for k, v in asdict(cfg).items()
            if k not in RESUMABLE_CHANGES and old.get(k, LEGACY_SETTINGS.get(k)) != v}
    if diff:
        raise ValueError(f"{out} holds an alignment run with other settings {diff}; use a new --out")


#: settings a reused round's samples and scores depend on (see :func:`branch_run`)
SAMPLE_SETTINGS = ("model", "samples_per_prompt", "conditional", "dataset", "seed", "temperature", "top_p",
                   "max_new_tokens", "potential", "relax_steps", "fmax", "relax_time_limit_s", "e_hull_cap",
                   "invalid_reward", "lora")


def _branch_identity(mark: dict) -> dict:
    """What makes two branch marks the same branch: the source run, the rounds kept, whether samples
    were reused and the source's settings, less those an extension of the source changes later
    (``rounds``, ``prompts``: the kept rounds' own prompt counts are in their records)."""
    settings = {k: v for k, v in mark.get("settings", {}).items() if k not in ("rounds", "prompts")}
    return {**mark, "settings": settings}


def branch_run(src: str | Path, cfg: AlignConfig, keep: int, *, reuse_samples: bool = False) -> None:
    """Start ``cfg.out_dir`` from the first ``keep`` finished rounds of the run folder ``src`` (copied
    whole: samples, scores, pairs, models, records), so :func:`run_align` continues from round
    ``keep`` under ``cfg``'s settings; ``src``'s settings are kept in ``branched_from.json``.

    ``reuse_samples``: round ``keep``'s samples and scores are copied too (the copied policy draws the
    same samples from the same prompts and seeds), so only its pairs and update are redone, e.g. with
    another ``family_share`` or ``beta``; the settings the samples depend on must then be ``src``'s.
    A folder already branched the same way is left as it is (a rerun resumes it)."""
    src, dst = Path(src), Path(cfg.out_dir)
    old = json.loads((src / "align_config.json").read_text())
    mark = {"run": str(src), "rounds_kept": keep, "samples_reused": reuse_samples, "settings": old}
    if (dst / "branched_from.json").is_file():
        if _branch_identity(json.loads((dst / "branched_from.json").read_text())) != _branch_identity(mark):
            raise ValueError(f"{dst} was branched from another run or round; use a new --out")
        return
    if any(dst.glob("round_*")):
        raise ValueError(f"{dst} already holds rounds; branch into a new --out")
    if not 0 < keep < cfg.rounds or not all((src / f"round_{r:02d}" / "record.json").is_file() for r in range(keep)):
        raise ValueError(f"{src} has no {keep} finished rounds to keep before round {cfg.rounds - 1}")
    if cfg.model != old.get("model"):
        raise ValueError(f"{src} aligned {old.get('model')!r}; a branch keeps its model and reference")
    if reuse_samples:
        nxt = src / f"round_{keep:02d}"
        rec = json.loads((nxt / "record.json").read_text()) if (nxt / "record.json").is_file() else {}
        want = {**{k: old.get(k) for k in SAMPLE_SETTINGS}, "prompts": rec.get("prompts", old.get("prompts"))}
        diff = {k: (v, getattr(cfg, k)) for k, v in want.items() if v != getattr(cfg, k)}
        if diff or not (nxt / "samples.parts").is_dir():
            raise ValueError(f"round {keep} of {src} cannot be reused: {diff or 'no samples'}")
    dst.mkdir(parents=True, exist_ok=True)
    for r in range(keep):
        shutil.copytree(src / f"round_{r:02d}", dst / f"round_{r:02d}")
    for name in ("samples.parts", "scores.parts") if reuse_samples else ():
        if (src / f"round_{keep:02d}" / name).is_dir():
            shutil.copytree(src / f"round_{keep:02d}" / name, dst / f"round_{keep:02d}" / name)
    write_json(mark, dst / "branched_from.json")


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


# ------------------------------------------------------------------------------------ the loop


def _sampler(cfg: AlignConfig, model, tokenizer):
    """A :class:`~llamat_cif.sampling.sample.BatchSampler` over the policy, with every sampling setting
    (temperature, top-p, physics rules and steering, dead-end redraws) resolved exactly as
    ``llamat-cif generate`` resolves its defaults; the policy is put in eval mode."""
    from llamat_cif.sampling.config import SampleConfig
    from llamat_cif.sampling.sample import BatchSampler

    settings = SampleConfig(n=cfg.samples_per_prompt, out_dir=cfg.out_dir, model=cfg.model,
                            temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                            batch_size=cfg.samples_per_prompt, device=cfg.device, fmt="cif", threads=None)
    return BatchSampler(settings, model=model, tokenizer=tokenizer)


def sampling_record(sampler) -> dict:
    """The resolved sampling settings of a round (the policy changes, these do not)."""
    skip = {"n", "out_dir", "model", "batch_size", "seed", "targets", "shard", "threads", "device", "decoder"}
    return {k: v for k, v in asdict(sampler.cfg).items() if k not in skip}


def _sample_prompt(sampler, cfg: AlignConfig, prompt: dict, round_index: int, k: int) -> pd.DataFrame:
    from llamat_cif.sampling.sample import decode_sample

    tokenizer = sampler.tokenizer
    n = cfg.samples_per_prompt
    new = sampler.draw(n, (cfg.seed, round_index, k), [sampler.conditions(prompt["target_formula"] or None, None)] * n)
    rows = []
    for i in range(n):
        ids = [t for t in new[i].tolist() if t != tokenizer.pad_token_id]
        rows.append({"id": f"r{round_index:02d}-{prompt['prompt']}-{i:02d}", "round": round_index,
                     "prompt": prompt["prompt"], "target_formula": prompt["target_formula"], "fmt": "cif",
                     "token_ids": ids, **decode_sample(ids, tokenizer, max_new_tokens=cfg.max_new_tokens)})
    return pd.DataFrame(rows)


_SCORER: Scorer | None = None


def _init_scorer(scorer: Scorer) -> None:
    import torch

    global _SCORER
    torch.set_num_threads(1)
    _SCORER = scorer


def _score_part(samples: pd.DataFrame) -> pd.DataFrame:
    return _SCORER(samples)


def _score_pool(scorer: Scorer, workers: int):
    """``workers`` processes (spawned, one torch thread each) that score prompts while the policy
    samples the next ones; the scorer travels to each worker once (a :class:`StabilityReward`
    reloads its potential there)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_scorer,
                               initargs=(scorer,))


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

    from llamat_cif.model import resolve_model_path
    from llamat_cif.progress import progress_bar
    from llamat_cif.sampling.config import model_format

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(out, cfg)
    source = resolve_model_path(cfg.model)
    if model_format(source) != "cif":
        raise ValueError(f"{source} was trained on the {model_format(source)!r} representation; "
                         "alignment samples CIF documents")
    write_json(asdict(cfg), out / "align_config.json")
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
    pool = _score_pool(scorer, cfg.score_workers) if cfg.score_workers and start < cfg.rounds else None
    with progress_bar(enabled=progress, fields=("note",)) as bar, pool or contextlib.nullcontext():
        for r in range(start, cfg.rounds):
            if model is None:
                model, tokenizer = load_policy(cfg, policy_dir, trainable=True)
                ref_model, _ = load_policy(cfg, source, trainable=False)
                for p in ref_model.parameters():
                    p.requires_grad_(False)
            rdir = out / f"round_{r:02d}"
            prompts = round_prompts(cfg, r, formulas)
            sampler = _sampler(cfg, model, tokenizer)
            t0 = time.time()
            task = bar.add_task(f"round {r} sample", total=len(prompts), note="")
            score_task = bar.add_task(f"round {r} score", total=len(prompts), note="")
            # one part per prompt (part k = prompt k), kept as the round's record of what was drawn
            sample_store = RunStore(rdir / "samples.parquet", append=False)
            score_store = RunStore(rdir / "scores.parquet", append=False)
            pending = {}  # prompt index -> the pool's scoring of its samples (scored while sampling goes on)
            for k, pr in enumerate(prompts):
                if not sample_store.part_path(k).is_file():
                    sample_store.write_part(_sample_prompt(sampler, cfg, pr, r, k), k)
                if pool is not None and not score_store.part_path(k).is_file():
                    pending[k] = pool.submit(_score_part, pd.read_parquet(sample_store.part_path(k)))
                for j in [j for j, fut in pending.items() if fut.done()]:  # kept as soon as scored
                    score_store.write_part(pending.pop(j).result(), j)
                bar.update(task, advance=1)
            samples = sample_store.read()
            t_sample = time.time() - t0
            for k, pr in enumerate(prompts):
                if k in pending:
                    score_store.write_part(pending.pop(k).result(), k)
                elif not score_store.part_path(k).is_file():
                    score_store.write_part(scorer(samples[samples["prompt"] == pr["prompt"]]), k)
                bar.update(score_task, advance=1)
            earlier = earlier_winners(out, r)
            scores = mark_duplicates(score_store.read(), earlier if cfg.cross_round_unique else None)
            scores = cap_families(samples, scores, earlier, share=cfg.family_share)
            t_score = time.time() - t0 - t_sample  # with a pool: scoring left after sampling ended
            pairs = build_pairs(samples, scores, margin=cfg.pair_margin, per_prompt=cfg.pairs_per_prompt)
            write_parquet(pairs, rdir / "pairs.parquet")
            write_parquet(scores, rdir / "scores.parquet")
            train_stats = {}
            if len(pairs):
                train_stats = dpo_update(model, ref_model, tokenizer, samples, pairs, cfg, r, rdir / "trainer")
                shutil.rmtree(rdir / "trainer", ignore_errors=True)
            save_policy(model, tokenizer, source, rdir / "model", cfg)
            rec = {"round": r, "prompts": len(prompts), **round_record(scores, pairs, cfg, train_n_el), "dpo": train_stats,
                   "wall_s": {"sample": round(t_sample, 1), "score": round(t_score, 1),
                              "update": round(time.time() - t0 - t_sample - t_score, 1)},
                   "sampling": sampling_record(sampler),
                   "protocol": scorer.protocol() if hasattr(scorer, "protocol") else {"scorer": repr(scorer)}}
            write_json(rec, rdir / "record.json")
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
