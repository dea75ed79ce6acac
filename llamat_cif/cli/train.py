"""``llamat-cif train``: pretrain a CIF generator on a corpus, or LoRA-finetune one on the task mix."""

from __future__ import annotations

import os

import click

from llamat_cif.cli._common import console, data_dir_option, fail, seed_option


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--corpus", type=click.Path(file_okay=False), default=None,
              help="Corpus folder from `llamat-cif corpus build` (from-scratch or continued pretraining).")
@click.option("--instructions", is_flag=True,
              help="Finetune on the LLaMat-CIF instruction task mix (LoRA on --base-model by default).")
@click.option("--base-model", type=click.Path(file_okay=False), default=None,
              help="Local Hugging Face checkpoint to continue from / adapt (never downloaded).")
@click.option("--config", "model_config", type=click.Choice(["tiny", "small", "base"]), default="small",
              show_default=True, help="Size of a model trained from scratch.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Run folder.")
@click.option("--max-steps", type=int, default=None, help="Optimizer steps [2000; LoRA 1000].")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Sequences per micro-batch.")
@click.option("--grad-accum", type=int, default=1, show_default=True, help="Micro-batches per step.")
@click.option("--lr", type=float, default=None, help="Peak learning rate [1e-3; LoRA 1e-4].")
@click.option("--warmup-steps", type=int, default=None, help="Linear warmup steps [100; LoRA 20].")
@click.option("--min-lr-ratio", type=float, default=None, help="Cosine floor / peak lr [0.1; LoRA 0].")
@click.option("--weight-decay", type=float, default=None, help="AdamW weight decay [0.1; LoRA 0].")
@click.option("--block-size", type=int, default=1024, show_default=True, help="Sequence length.")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default="auto", show_default=True,
              help="bf16 autocast (auto: on bf16 GPUs and CPUs with native bf16; fp32 on AVX2-only CPUs).")
@click.option("--save-dtype", type=click.Choice(["bf16", "fp32"]), default=None,
              help="dtype of the saved final weights [bf16; LoRA fp32].")
@click.option("--eval-every", type=int, default=200, show_default=True)
@click.option("--eval-batches", type=int, default=20, show_default=True)
@click.option("--save-every", type=int, default=500, show_default=True, help="Checkpoint interval (steps).")
@click.option("--log-every", type=int, default=10, show_default=True)
@click.option("--num-workers", type=int, default=0, show_default=True, help="DataLoader workers.")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in --out.")
@click.option("--stop-after", type=int, default=None,
              help="Stop (checkpointed) after this many steps; --resume continues the same schedule.")
@click.option("--time-limit", type=float, default=None,
              help="Minutes; then stop gracefully with a checkpoint (--resume continues).")
@click.option("--text-dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Plain-text files mixed into pretraining (continued pretraining).")
@click.option("--text-fraction", type=float, default=0.03, show_default=True,
              help="Share of training blocks drawn from --text-dir (LLaMat kept ~3%).")
@click.option("--lora/--no-lora", "use_lora", default=None,
              help="Train a LoRA adapter (default: on with --instructions, off otherwise).")
@click.option("--lora-r", type=int, default=8, show_default=True)
@click.option("--lora-alpha", type=int, default=32, show_default=True)
@click.option("--lora-dropout", type=float, default=0.05, show_default=True)
@click.option("--lora-targets", default="q_proj,v_proj", show_default=True, help="Comma-separated modules.")
@click.option("--merge", is_flag=True, help="After LoRA, also write a merged model to OUT/merged.")
@click.option("--dataset", default="mp20", show_default=True, help="Structures for --instructions.")
@click.option("--split", default="train", show_default=True)
@click.option("--limit", type=int, default=None, help="Use at most this many structures (--instructions).")
@click.option("--fmt", type=click.Choice(["cif", "llamat"]), default="cif", show_default=True,
              help="Crystal text representation in the instruction tasks.")
@click.option("--tasks", default=None, help="Comma-separated instruction tasks (default: all).")
@click.option("--val-fraction", type=float, default=0.02, show_default=True,
              help="Share of instruction examples held out for the validation loss.")
@click.option("--jobs", type=int, default=2, show_default=True,
              help="Worker processes building the instruction mix.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@data_dir_option
@seed_option
def train(corpus, instructions, base_model, model_config, out_dir, max_steps, batch_size, grad_accum,
          lr, warmup_steps, min_lr_ratio, weight_decay, block_size, precision, save_dtype, eval_every,
          eval_batches, save_every, log_every, num_workers, resume, stop_after, time_limit, text_dir,
          text_fraction, use_lora, lora_r, lora_alpha, lora_dropout, lora_targets, merge, dataset,
          split, limit, fmt, tasks, val_fraction, jobs, progress, data_dir, seed) -> None:
    """Train a generator: from scratch / continued on --corpus, or LoRA on --instructions.

    \b
    Examples:
      llamat-cif train --corpus corpus/ --config small --out runs/small
      llamat-cif train --corpus corpus/ --base-model ckpt/ --text-dir text/ --out runs/cpt
      llamat-cif train --instructions --base-model runs/small/final --merge --out runs/lora
      accelerate launch -m llamat_cif train --corpus corpus/ --config base --out runs/base
    """
    from llamat_cif.model import LoraSettings, ModelLoadError, local_model_dir
    from llamat_cif.train.config import TrainConfig
    from llamat_cif.train.recipes import train_from_corpus, train_supervised

    if bool(corpus) == bool(instructions):
        fail("give exactly one of --corpus DIR or --instructions")
    if instructions and not base_model:
        fail("--instructions needs --base-model PATH (the checkpoint to adapt)")
    if use_lora is None:
        use_lora = bool(instructions)
    if merge and not use_lora:
        fail("--merge needs LoRA (--lora or --instructions)")
    lora = None
    if use_lora:
        if not base_model:
            fail("LoRA needs --base-model PATH")
        lora = LoraSettings(r=lora_r, alpha=lora_alpha, dropout=lora_dropout,
                            target_modules=tuple(t.strip() for t in lora_targets.split(",") if t.strip()))
    defaults = (dict(max_steps=1000, lr=1e-4, warmup_steps=20, min_lr_ratio=0.0, weight_decay=0.0,
                     save_dtype="fp32") if use_lora else
                dict(max_steps=2000, lr=1e-3, warmup_steps=100, min_lr_ratio=0.1, weight_decay=0.1,
                     save_dtype="bf16"))
    given = dict(max_steps=max_steps, lr=lr, warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio,
                 weight_decay=weight_decay, save_dtype=save_dtype)
    settings = {k: (given[k] if given[k] is not None else v) for k, v in defaults.items()}
    try:
        config = TrainConfig(
            out_dir=out_dir, batch_size=batch_size, grad_accum=grad_accum, block_size=block_size,
            precision=precision, eval_every=eval_every, eval_batches=eval_batches,
            save_every=save_every, log_every=log_every, num_workers=num_workers, seed=seed,
            lora=lora, merge=merge, **settings)
    except ValueError as exc:
        fail(str(exc))
    limit_s = None if time_limit is None else 60.0 * time_limit
    try:
        if base_model:
            local_model_dir(base_model)  # fail before any slow data preparation
        if corpus:
            result = train_from_corpus(corpus, config, model_config=model_config, base_model=base_model,
                                       text_dir=text_dir, text_fraction=text_fraction, resume=resume,
                                       stop_after=stop_after, progress=progress, time_limit_s=limit_s)
        else:
            from llamat_cif.instructions import split_examples, task_mix_from_dataset

            task_list = [t.strip() for t in tasks.split(",")] if tasks else None
            examples = task_mix_from_dataset(dataset, split, data_dir=data_dir, limit=limit, fmt=fmt,
                                             tasks=task_list, seed=seed, n_jobs=jobs,
                                             progress=progress)
            train_ex, val_ex = split_examples(examples, val_fraction=val_fraction, seed=seed)
            counts: dict[str, int] = {}
            for ex in train_ex:
                counts[ex.task] = counts.get(ex.task, 0) + 1
            console.print(f"instruction mix: {len(train_ex)} train / {len(val_ex)} val examples "
                          f"from {dataset}/{split}: {counts}")
            result = train_supervised(
                [(e.prompt, e.completion) for e in train_ex], config, base_model=base_model,
                val_pairs=[(e.prompt, e.completion) for e in val_ex] or None, resume=resume,
                stop_after=stop_after, progress=progress, time_limit_s=limit_s,
                describe={"instructions": {"dataset": dataset, "split": split, "limit": limit,
                                           "fmt": fmt, "task_counts": counts}})
    except (FileNotFoundError, ModelLoadError, ValueError) as exc:
        fail(str(exc))
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun / accelerate launch only the main process reports
    val = f"{result.val_loss:.4f}" if result.val_loss is not None else "-"
    trn = f"{result.train_loss:.4f}" if result.train_loss is not None else "-"
    console.print(f"step {result.step}/{config.max_steps}  train loss {trn}  val loss {val}  "
                  f"tokens {result.tokens_seen:,}  {result.wall_s:.0f} s  params {result.params:,} "
                  f"(trainable {result.trainable_params:,})")
    if result.final_dir:
        console.print(f"final model: [bold]{result.final_dir}[/]")
    else:
        console.print(f"stopped at step {result.step} ({result.stopped}); continue with the same "
                      f"options plus --resume")
    if result.merged_dir:
        console.print(f"merged model: [bold]{result.merged_dir}[/]")
