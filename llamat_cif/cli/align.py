"""``llamat-cif align``: finetune a generator on its own samples, rewarded by relaxed stability."""

from __future__ import annotations

import os

import click

from llamat_cif.cli._common import console, data_dir_option, fail, seed_option
from llamat_cif.stability.relax import quiet_warnings


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", default="default", show_default=True,
              help="Generator to align: shipped name, model folder or LoRA adapter folder.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Run folder (rerun with the same folder to resume; a larger --rounds extends it, with another --prompts if wanted).")
@click.option("--rounds", type=int, default=4, show_default=True, help="Sample-score-update rounds.")
@click.option("--prompts", type=int, default=16, show_default=True, help="Prompts per round.")
@click.option("--samples-per-prompt", type=int, default=6, show_default=True,
              help="Constrained samples per prompt (pairs are formed within a prompt).")
@click.option("--conditional", type=float, default=0.5, show_default=True,
              help="Share of prompts that are formula headers drawn from the training compositions.")
@click.option("--dataset", default="mp20", show_default=True,
              help="Training set: prompt compositions and the novelty reference (train split).")
@click.option("--temperature", type=float, default=None, help="Sampling temperature [default: the model's].")
@click.option("--top-p", type=float, default=None, help="Nucleus cut [default: the model's].")
@click.option("--potential", default="chgnet", show_default=True, help="ML potential for the reward.")
@click.option("--relax-steps", type=int, default=100, show_default=True,
              help="FIRE steps of the short relaxation behind each reward.")
@click.option("--fmax", type=float, default=0.1, show_default=True, help="FIRE force threshold, eV/Å.")
@click.option("--e-hull-cap", type=float, default=1.0, show_default=True,
              help="Reward = -min(E_hull, cap) eV/atom; invalid samples score below -cap.")
@click.option("--pair-margin", type=float, default=0.05, show_default=True,
              help="eV/atom a relaxed, eligible rival must be worse by to be rejected.")
@click.option("--pairs-per-prompt", type=int, default=3, show_default=True)
@click.option("--cross-round-unique/--round-unique-only", default=True, show_default=True,
              help="A sample matching one that won a pair in an earlier round cannot win again "
                   "(--round-unique-only: only duplicates within the round are barred).")
@click.option("--family-share", type=float, default=0.05, show_default=True,
              help="No structure family (anonymous formula + space group) may hold more than this "
                   "share of the run's winners (2 always allowed); 0 turns the cap off.")
@click.option("--beta", type=float, default=0.1, show_default=True, help="DPO beta (KL anchor strength).")
@click.option("--sft-weight", type=float, default=0.2, show_default=True,
              help="Weight of the chosen sample's NLL added to the DPO loss.")
@click.option("--lr", type=float, default=3e-5, show_default=True, help="Learning rate of each update.")
@click.option("--epochs", type=int, default=2, show_default=True, help="Passes over a round's pairs.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Pairs per optimizer step.")
@click.option("--lora/--full", default=False, show_default=True,
              help="Train a fresh LoRA adapter instead of all weights (an adapter given as --model "
                   "always trains as an adapter).")
@click.option("--device", default=None, help="cpu / cuda (default: cuda when available).")
@click.option("--threads", type=int, default=1, show_default=True, help="CPU threads for torch.")
@click.option("--score-workers", type=int, default=0, show_default=True,
              help="Processes that score a prompt's samples while the next prompt is sampled "
                   "(0: score after sampling, in this process).")
@click.option("--from-run", type=click.Path(file_okay=False, exists=True), default=None,
              help="Branch: start --out from the first --keep-rounds finished rounds of this run folder "
                   "(copied; its settings kept in branched_from.json) and continue under these settings.")
@click.option("--keep-rounds", type=click.IntRange(min=1), default=None, help="Rounds of --from-run to keep.")
@click.option("--reuse-samples", is_flag=True,
              help="With --from-run: also reuse the next round's samples and scores, so only its pairs and "
                   "update are redone (the settings they depend on must be the source's).")
@click.option("--progress/--no-progress", default=True)
@seed_option
@data_dir_option
def align(model, out_dir, rounds, prompts, samples_per_prompt, conditional, dataset, temperature, top_p,
          potential, relax_steps, fmax, e_hull_cap, pair_margin, pairs_per_prompt, cross_round_unique,
          family_share, beta, sft_weight, lr, epochs, batch_size, lora, device, threads, score_workers, from_run,
          keep_rounds, reuse_samples, progress, seed, data_dir) -> None:
    """Align a generator with stability: sample, relax, score by E_hull, update by DPO; repeat.

    Each round draws --samples-per-prompt constrained samples for --prompts prompts, scores every
    sample by -E_hull after a short CHGNet relaxation (invalid -> worst; a sample matching a
    training structure, another sample of the round or an earlier round's winner never wins, nor
    one from a structure family that already holds --family-share of the run's winners), pairs the
    best sample of each prompt against worse ones and runs one DPO update (trl) anchored to the
    starting model. Writes round_NN/{samples,scores,pairs,model,record.json}, rounds.jsonl,
    curves.png, elements.png and final/ (the last round's model, usable as --model anywhere).
    --from-run DIR --keep-rounds K branches a new --out from DIR's first K rounds.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    quiet_warnings()
    from llamat_cif.data import DataError
    from llamat_cif.model import ModelLoadError
    from llamat_cif.stability import HullError, PotentialError
    from llamat_cif.train.align import branch_run, run_align
    from llamat_cif.train.config import AlignConfig

    try:
        cfg = AlignConfig(out_dir=out_dir, model=model, rounds=rounds, prompts=prompts,
                          samples_per_prompt=samples_per_prompt, conditional=conditional, dataset=dataset,
                          seed=seed, temperature=temperature, top_p=top_p, potential=potential,
                          relax_steps=relax_steps, fmax=fmax, e_hull_cap=e_hull_cap, pair_margin=pair_margin,
                          pairs_per_prompt=pairs_per_prompt, cross_round_unique=cross_round_unique,
                          family_share=family_share,
                          beta=beta, sft_weight=sft_weight, lr=lr,
                          epochs=epochs, batch_size=batch_size, lora=lora, device=device, threads=threads,
                          score_workers=score_workers)
        if from_run is not None or keep_rounds is not None or reuse_samples:
            if from_run is None or keep_rounds is None:
                raise ValueError("--from-run and --keep-rounds go together (--reuse-samples needs both)")
            branch_run(from_run, cfg, keep_rounds, reuse_samples=reuse_samples)
        records = run_align(cfg, data_dir=data_dir, progress=progress)
    except (ValueError, ModelLoadError, DataError, HullError, PotentialError) as exc:
        fail(str(exc))
    from rich.table import Table

    t = Table(title=f"alignment rounds ({out_dir})")
    for c in ("round", "reward mean", "metastable", "stable", "valid", "unique", "novel", "W(N_el)", "pairs"):
        t.add_column(c)
    for r in records:
        t.add_row(str(r["round"]), f"{r['reward_mean']:.3f}",
                  *(f"{r[k]['n']}/{r[k]['of']}" for k in ("metastable", "stable", "valid")),
                  *(f"{r[k]['n']}/{r[k]['of_valid']}" if k in r else "-" for k in ("unique", "novel")),
                  f"{r.get('w_n_el', float('nan')):.3f}", str(r["pairs"]))
    console.print(t)
    console.print(f"aligned model: {out_dir}/final  (use as --model)")
