"""``llamat-cif text``: evaluate or finetune a causal LM on LLaMat's materials SIE tasks."""

from __future__ import annotations

import click

from llamat_cif.cli._common import console, data_dir_option, fail, seed_option

TASK_CHOICES = ["doping", "mof1", "mof2", "discomat", "all"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def text() -> None:
    """Materials structured-information extraction (LLaMat-Chat tasks: doping, mof1, mof2, discomat).

    \b
    Data: $LLAMAT_CIF_DATA/text/*.jsonl (or --data-dir).
    Examples:
      llamat-cif text tasks
      llamat-cif text eval --task doping --model runs/text/final --out runs/text_eval
      llamat-cif text train --task doping --base-model ckpt/ --out runs/text_lora
      llamat-cif text train --task doping --scratch-size mini --out runs/text_scratch
    """


@text.command("tasks")
@data_dir_option
def tasks_cmd(data_dir) -> None:
    """List the tasks, their files, example counts and malformed lines."""
    from rich.table import Table

    from llamat_cif.text_tasks.tasks import TASKS, TaskError, load_task

    table = Table(title="LLaMat SIE tasks")
    for col in ("task", "split", "valid", "malformed", "file", "what"):
        table.add_column(col)
    for name, spec in TASKS.items():
        for split in spec.files:
            try:
                ts = load_task(name, split, data_dir=data_dir)
                valid, bad, path = str(len(ts.examples)), str(len(ts.malformed)), str(ts.path)
            except TaskError as exc:
                valid, bad, path = "-", "-", f"[red]{exc}[/]"
            table.add_row(name, split, valid, bad, path, spec.description)
    console.print(table)


@text.command("eval")
@click.option("--task", type=click.Choice(TASK_CHOICES), required=True, help="Task, or all.")
@click.option("--model", required=True,
              help="Local causal-LM folder or peft adapter folder (adapter_config.json), or a model name.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Output folder.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Prompts generated together.")
@click.option("--limit", type=int, default=None, help="Evaluate a seeded random subset of this many examples per task.")
@click.option("--max-new-tokens", type=int, default=None, help="Generation budget [task default: 256; mof 768].")
@click.option("--chat-template", type=click.Choice(["auto", "never", "always"]), default="auto", show_default=True,
              help="Use the tokenizer's chat template (auto: when it has one) or LLaMat's plain layout.")
@click.option("--device", default=None, help="Torch device [cuda if available, else cpu].")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default=None, help="Model dtype.")
@click.option("--all-metrics", is_flag=True, help="Show every metric, not only LLaMat's headline ones.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@data_dir_option
@seed_option
def eval_cmd(task, model, out_dir, batch_size, limit, max_new_tokens, chat_template, device, dtype,
             all_metrics, progress, data_dir, seed) -> None:
    """Greedy-generate answers for the test set, save them as they go (resumable), and score them."""
    from llamat_cif.model import ModelLoadError
    from llamat_cif.progress import progress_bar
    from llamat_cif.text_tasks.evaluate import EvalConfig, evaluate
    from llamat_cif.text_tasks.tasks import TaskError

    if batch_size < 1:
        fail("--batch-size must be >= 1")
    config = EvalConfig(
        tasks=_expand(task), model=model, out_dir=out_dir, batch_size=batch_size, limit=limit,
        seed=seed, max_new_tokens=max_new_tokens, chat_template=chat_template, data_dir=data_dir,
        device=device, dtype=dtype,
    )
    bar = progress_bar(enabled=progress, console=console)
    ids: dict[str, int] = {}

    def update(name: str, done: int, total: int) -> None:
        if name not in ids:
            ids[name] = bar.add_task(name, total=total)
        bar.update(ids[name], completed=done)

    try:
        with bar:
            result = evaluate(config, progress=update)
    except (ModelLoadError, TaskError, FileNotFoundError) as exc:
        fail(str(exc))
    _print_results(result, all_metrics)
    console.print(f"predictions and metrics in [bold]{out_dir}[/] (summary.json, <task>/metrics.json)")


def _expand(task: str) -> tuple[str, ...]:
    from llamat_cif.text_tasks.evaluate import expand_tasks

    return expand_tasks(task)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _print_results(result: dict, all_metrics: bool) -> None:
    from rich.table import Table

    from llamat_cif.text_tasks.evaluate import table_rows

    for name, record in result["tasks"].items():
        counts = record["strict"]["counts"]
        table = Table(title=f"{name}: {record['n_evaluated']} examples, "
                            f"{record['n_unparsable_outputs']} unparsable outputs, "
                            f"{record.get('wall_s', 0):.0f} s")
        for col in ("metric", "score", "counts", "LLaMat protocol*", "denominator"):
            table.add_column(col, justify="right" if col in ("score", "counts", "LLaMat protocol*") else "left")
        for row in table_rows(record, all_metrics=all_metrics):
            table.add_row(row.metric, _fmt(row.value), row.counts, _fmt(row.extra["llamat"]), row.note)
        console.print(table)
        empty = counts.get("empty_gold")
        if empty and empty["n"]:
            console.print(
                f"  gold answers with nothing annotated (not in the scores): {empty['n']}; the model "
                f"answered empty for {empty['pred_empty']}, extracted something for "
                f"{empty['pred_nonempty']}, unparsable {empty['unparsable']}"
            )
        if record["malformed_lines"]:
            console.print(f"  [yellow]{len(record['malformed_lines'])} malformed lines skipped in "
                          f"{record['data_file']}[/] (see metrics.json)")
        if record["llamat"].get("error"):
            console.print(f"  [yellow]LLaMat protocol: no score[/] ({record['llamat']['error']})")
    console.print("  * LLaMat protocol: what LLaMat's evaluation scripts print for these outputs (their parsing; "
                  "unreadable outputs mostly left out); n/a where they give no number.")


@text.command("train")
@click.option("--task", type=click.Choice(["doping", "mof1", "mof2", "all"]), required=True,
              help="Training set(s); all = doping + mof1 + mof2 (discomat has no training split).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Run folder.")
@click.option("--base-model", type=click.Path(file_okay=False), default=None,
              help="Local Hugging Face checkpoint to adapt (never downloaded).")
@click.option("--scratch-size", type=click.Choice(["tiny", "mini", "small", "base"]), default="mini", show_default=True,
              help="Without --base-model: size of a from-scratch model (with its own BPE tokenizer).")
@click.option("--lora/--full", "use_lora", default=True, show_default=True,
              help="LoRA adapter on --base-model, or full finetuning.")
@click.option("--lora-r", type=int, default=8, show_default=True)
@click.option("--lora-alpha", type=int, default=32, show_default=True)
@click.option("--merge", is_flag=True, help="After LoRA, also write OUT/merged.")
@click.option("--max-steps", type=int, default=500, show_default=True, help="Optimizer steps.")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--grad-accum", type=int, default=1, show_default=True)
@click.option("--lr", type=float, default=None, help="Peak learning rate [LoRA 1e-4; otherwise 1e-3].")
@click.option("--warmup-steps", type=int, default=20, show_default=True)
@click.option("--block-size", type=int, default=1024, show_default=True, help="Longest training sequence.")
@click.option("--vocab-size", type=int, default=4096, show_default=True, help="From-scratch BPE vocabulary.")
@click.option("--lm-fraction", type=float, default=0.0, show_default=True,
              help="From scratch: share of items that are LM blocks of the training documents.")
@click.option("--val-fraction", type=float, default=0.05, show_default=True)
@click.option("--limit", type=int, default=None, help="At most this many training examples per task.")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default="fp32", show_default=True,
              help="fp32 default: bf16 autocast measured slower on small CPUs.")
@click.option("--chat-template", type=click.Choice(["auto", "never", "always"]), default="auto", show_default=True)
@click.option("--eval-every", type=int, default=100, show_default=True)
@click.option("--save-every", type=int, default=200, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in --out.")
@click.option("--progress/--no-progress", default=True)
@data_dir_option
@seed_option
def train_cmd(task, out_dir, base_model, scratch_size, use_lora, lora_r, lora_alpha, merge, max_steps,
              batch_size, grad_accum, lr, warmup_steps, block_size, vocab_size, lm_fraction, val_fraction,
              limit, precision, chat_template, eval_every, save_every, resume, progress, data_dir, seed) -> None:
    """Instruction-finetune on the SIE training sets with the project's training loop."""
    from llamat_cif.model import ModelLoadError
    from llamat_cif.text_tasks.finetune import TextTrainConfig, expand_train_tasks, finetune
    from llamat_cif.text_tasks.tasks import TaskError

    try:
        config = TextTrainConfig(
            tasks=expand_train_tasks(task), out_dir=out_dir, base_model=base_model, scratch_size=scratch_size,
            vocab_size=vocab_size, lora=use_lora, lora_r=lora_r, lora_alpha=lora_alpha, merge=merge,
            max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr, warmup_steps=warmup_steps,
            block_size=block_size, lm_fraction=lm_fraction, val_fraction=val_fraction, limit=limit, seed=seed,
            precision=precision, chat_template=chat_template, eval_every=eval_every, save_every=save_every,
            data_dir=data_dir,
        )
        result = finetune(config, progress=progress, resume=resume)
    except (ValueError, ModelLoadError, TaskError, FileNotFoundError) as exc:
        fail(str(exc))
    model_dir = result.merged_dir or result.final_dir
    console.print(
        f"trained {result.step} steps in {result.wall_s:.0f} s; train loss {_fmt(result.train_loss)}, "
        f"val loss {_fmt(result.val_loss)}; {result.trainable_params:,} trainable of {result.params:,} params"
    )
    console.print(f"model: [bold]{model_dir}[/]  ->  llamat-cif text eval --task {task if task != 'all' else 'all'} "
                  f"--model {model_dir} --out <dir>")
