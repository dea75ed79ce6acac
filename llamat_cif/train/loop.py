"""The training loop shared by every generator: from scratch, continued pretraining, LoRA finetuning.

:func:`run_training` is the loop: AdamW (no decay on norms/biases), linear warmup + cosine decay to
``min_lr_ratio * lr`` (:func:`lr_at`), gradient accumulation, bf16 autocast where it helps
(:func:`resolve_precision`), periodic validation loss (:func:`evaluate`), checkpoints (model,
optimizer, scheduler, RNG states, step, data position) that resume exactly, ``train_log.jsonl``,
``train_config.json`` and a rich progress bar. SIGINT/SIGTERM and a time limit end a run gracefully
with a checkpoint. It runs under ``accelerate launch`` unchanged (``accelerate.Accelerator`` does
device placement, DDP and gradient sync). ``out_dir/final/`` is always loadable by
:func:`llamat_cif.model.load_generator`. The run folder's files are handled in
:mod:`llamat_cif.train.checkpoints`.

The schedule and the collator stay hand-written rather than transformers'
``get_cosine_with_min_lr_schedule_with_warmup`` / ``DataCollatorForSeq2Seq``: the library's warmup
starts at lr 0 (ours at ``lr / warmup_steps``) and its cosine rises again past ``max_steps`` (ours
holds the floor); its collator needs the tokenizer and pads on its ``padding_side``, which some
checkpoints or generation set-ups set to ``left``. Either would change the numbers of a run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shlex
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import torch

from llamat_cif.model import count_parameters
from llamat_cif.progress import progress_bar
from llamat_cif.train.checkpoints import (
    check_resume_config,
    latest_checkpoint,
    list_checkpoints,
    save_final,
)
from llamat_cif.train.config import TrainConfig
from llamat_cif.train.streams import IGNORE_INDEX, Collator, Stream, StreamView, process_indices


@dataclass
class TrainResult:
    """What a run produced."""

    out_dir: Path
    final_dir: Path | None
    step: int
    train_loss: float | None
    val_loss: float | None
    tokens_seen: int
    wall_s: float
    merged_dir: Path | None = None
    params: int = 0
    trainable_params: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None  # why the run ended before max_steps (None: it completed)


class RunOptions(TypedDict, total=False):
    """How :func:`run_training` runs, passed through unchanged by the entry points that call it
    (``resume``, ``stop_after``, ``progress``, ``time_limit_s``; see :func:`run_training`)."""

    resume: bool
    stop_after: int | None
    progress: bool
    time_limit_s: float | None


@contextlib.contextmanager
def _muted(logger_name: str):
    """Raise one library logger to ERROR for the duration of the block."""
    import logging

    log = logging.getLogger(logger_name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based): linear warmup, then cosine."""
    if config.warmup_steps > 0 and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    span = max(1, config.max_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere it is emulated."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except RuntimeError:
            continue
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where bf16 autocast is fast, else ``fp32``.

    Fast means a CUDA GPU with bf16, or a CPU with native bf16 (AVX512-BF16/AMX). On the AVX2-only
    2-core machines of this project bf16 autocast measured 2.5-4x *slower* than fp32 for the
    ``small`` model (oneDNN emulates bf16 there), so ``auto`` picks fp32 on such CPUs.
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            # weight matrices and embeddings decay; norm gains and biases do not
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


@torch.no_grad()
def evaluate(model: torch.nn.Module, stream: Stream, config: TrainConfig, collate: Collator,
             device: torch.device, use_bf16: bool) -> float:
    """Token-weighted mean loss over the first ``eval_batches`` batches of a validation stream."""
    was_training = model.training
    model.eval()
    n_items = min(config.eval_batches * config.batch_size, stream.epoch_size())
    total, count = 0.0, 0
    for start in range(0, n_items, config.batch_size):
        batch = collate([stream[k] for k in range(start, min(start + config.batch_size, n_items))])
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = model(**batch)
        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        if n == 0:  # e.g. a one-token tail block: nothing to predict (the loss would be NaN)
            continue
        total += float(out.loss) * n
        count += n
    if was_training:
        model.train()
    return total / max(count, 1)


def run_training(
    config: TrainConfig,
    *,
    model: torch.nn.Module,
    tokenizer: Any,
    train_data: Stream,
    val_data: Stream | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    describe: dict[str, Any] | None = None,
    progress: bool = True,
    time_limit_s: float | None = None,
) -> TrainResult:
    """Train ``model`` on ``train_data`` for ``config.max_steps`` optimizer steps.

    SIGINT (Ctrl-C) and SIGTERM (``timeout``, schedulers) end the run gracefully: the current step
    finishes, a checkpoint is written, and ``resume=True`` later continues exactly. A second signal
    stops at once.

    Args:
        config: the run's settings; ``out_dir`` receives logs, checkpoints and ``final/``.
        model: a causal LM (already wrapped with peft when training LoRA; see :func:`llamat_cif.model.prepare_model`).
        tokenizer: saved into ``final/`` beside the weights.
        train_data: training stream.
        val_data: validation stream (evaluated every ``eval_every`` steps and at the end).
        resume: continue from the newest checkpoint in ``out_dir`` (a fresh start when none).
        stop_after: stop (with a checkpoint) after this many steps in total, as if interrupted;
            the schedule still runs to ``max_steps`` when resumed.
        describe: extra provenance (data, model source) for ``train_config.json``.
        progress: show a rich progress bar on the main process.
        time_limit_s: stop gracefully (with a checkpoint) once this much wall time has passed in
            this call, e.g. to fit a job limit; resume to continue.

    Returns:
        A :class:`TrainResult`; ``final_dir`` is ``None`` when stopped before ``max_steps``
        (``stopped`` says why).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    out_dir = Path(config.out_dir)
    # Autocast is done here rather than by accelerate's mixed_precision so that one process can run
    # fp32 and bf16 trainings one after another (accelerate's state is a process-wide singleton).
    # Several processes without CUDA (torchrun / accelerate launch on CPUs) run gloo DDP on CPU.
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(mixed_precision="no", cpu=multi_cpu)
    device = accelerator.device
    precision = resolve_precision(config.precision, device)
    use_bf16 = precision == "bf16"
    is_main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index

    start_step = 0
    ckpt = latest_checkpoint(out_dir) if resume else None
    if ckpt is not None:
        check_resume_config(out_dir, config)
    if ckpt is None and is_main and (out_dir / "checkpoints").exists():
        # a fresh run in an old folder: old checkpoints would be picked up by a later --resume
        shutil.rmtree(out_dir / "checkpoints")
    set_seed(config.seed)
    out_dir.mkdir(parents=True, exist_ok=True)

    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    collate = Collator(pad_id)

    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr,
                                  betas=(config.beta1, config.beta2), eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, config))
    model, optimizer = accelerator.prepare(model, optimizer)
    # the scheduler is stepped by hand once per optimizer step (accelerate would step it once per
    # process), and registered so that save_state/load_state carry it
    accelerator.register_for_checkpointing(scheduler)

    n_params = count_parameters(accelerator.unwrap_model(model))
    n_train = count_parameters(accelerator.unwrap_model(model), trainable_only=True)
    resolved = {
        "config": asdict(config),
        "resolved": {"precision": precision, "device": str(device), "world_size": world,
                     "sequences_per_step": config.batch_size * config.grad_accum * world,
                     "params": n_params, "trainable_params": n_train,
                     "train_items_per_epoch": train_data.epoch_size(),
                     "train_tokens_per_epoch": train_data.tokens_per_epoch()},
        "data": describe or {},
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "versions": _versions(),
        "hardware": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                     "torch_threads": torch.get_num_threads(),
                     "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
    }

    history: list[dict[str, Any]] = []
    tokens_seen, elapsed_before = 0, 0.0
    if ckpt is not None:
        accelerator.load_state(str(ckpt))
        state = json.loads((ckpt / "trainer_state.json").read_text())
        if int(state.get("world_size", world)) != world:
            # the data position is laid out per process; another world size would re-read items
            raise ValueError(f"cannot resume {ckpt}: it was written by {state['world_size']} "
                             f"process(es), this run has {world}")
        start_step = int(state["step"])
        tokens_seen = int(state["tokens_seen"])
        elapsed_before = float(state["wall_s"])
        if is_main:
            resolved["resumed_from"] = str(ckpt)
    if is_main:
        (out_dir / "train_config.json").write_text(json.dumps(resolved, indent=2, default=str))
    log_path = out_dir / "train_log.jsonl"
    if is_main and start_step == 0 and log_path.exists():
        log_path.unlink()
    if is_main and start_step > 0 and log_path.exists():
        # drop log lines written after the checkpoint (an interrupted run may have gone further)
        kept = [ln for ln in log_path.read_text().splitlines() if ln and json.loads(ln)["step"] <= start_step]
        log_path.write_text("".join(ln + "\n" for ln in kept))

    end_step = config.max_steps if stop_after is None else min(config.max_steps, stop_after)
    indices = process_indices(start_step, end_step, config, rank, world)
    loader = torch.utils.data.DataLoader(
        StreamView(train_data, indices), batch_size=config.batch_size, shuffle=False,
        collate_fn=collate, num_workers=config.num_workers,
        # own generator: creating the iterator must not draw from the global RNG, or a resumed run
        # would see a different dropout stream than an uninterrupted one
        generator=torch.Generator().manual_seed(config.seed),
        persistent_workers=False,
        pin_memory=device.type == "cuda",
    )
    batches = iter(loader)

    def log(row: dict[str, Any]) -> None:
        history.append(row)
        if is_main:
            with log_path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")

    def save_checkpoint(step: int, wall: float) -> None:
        folder = out_dir / "checkpoints" / f"step_{step:07d}"
        # accelerate warns on every save that the tied lm_head/embedding tensor is stored once: by
        # design for tied models (reloading re-ties it), so that one logger is muted while saving
        with _muted("accelerate.utils.other"):
            accelerator.save_state(str(folder))
        if is_main:
            (folder / "trainer_state.json").write_text(json.dumps(
                {"step": step, "tokens_seen": tokens_seen, "wall_s": wall, "world_size": world,
                 "data_position": int((step * config.grad_accum * world) * config.batch_size)}))
            for old in list_checkpoints(out_dir)[:-config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    model.train()
    t0 = time.perf_counter()
    last_loss: float | None = None
    val_loss: float | None = None
    window_tokens, window_t = 0, time.perf_counter()
    bar = progress_bar(enabled=is_main and progress, fields=("loss",))
    stop = _GracefulStop()
    deadline = None if time_limit_s is None else time.perf_counter() + time_limit_s
    done, stopped = start_step, None
    with stop.installed(), bar:
        task = bar.add_task("train", total=config.max_steps, completed=start_step, loss="")
        for step in range(start_step, end_step):
            loss_sum, step_tokens = 0.0, 0
            for micro in range(config.grad_accum):
                batch = next(batches)
                # counted on the host copy: no device sync per micro-batch
                step_tokens += int(batch["attention_mask"].sum()) * world
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                sync = micro == config.grad_accum - 1
                ctx = contextlib.nullcontext() if sync else accelerator.no_sync(model)
                with ctx:
                    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                        loss = model(**batch).loss
                    accelerator.backward(loss / config.grad_accum)
                loss_sum += float(loss.detach())
            if config.grad_clip > 0:
                accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            last_loss = loss_sum / config.grad_accum
            if world > 1:
                last_loss = float(accelerator.reduce(torch.tensor(last_loss, device=device), "mean"))
            tokens_seen += step_tokens
            window_tokens += step_tokens
            want_stop = stop.reason or (
                "time limit" if deadline is not None and time.perf_counter() > deadline else None)
            if world > 1:  # every process must stop at the same step (checkpointing is collective)
                any_stop = accelerator.reduce(torch.tensor(float(want_stop is not None), device=device), "sum")
                want_stop = (want_stop or "another process stopped") if float(any_stop) > 0 else None
            if done % config.log_every == 0 or done == end_step or want_stop:
                now = time.perf_counter()
                log({"step": done, "loss": round(last_loss, 6), "lr": scheduler.get_last_lr()[0],
                     "tokens": tokens_seen, "tokens_per_s": round(window_tokens / max(now - window_t, 1e-9), 1),
                     "wall_s": round(elapsed_before + now - t0, 2)})
                window_tokens, window_t = 0, now
            if val_data is not None and (done % config.eval_every == 0 or done == config.max_steps):
                val_loss = evaluate(model, val_data, config, collate, device, use_bf16)
                log({"step": done, "val_loss": round(val_loss, 6),
                     "wall_s": round(elapsed_before + time.perf_counter() - t0, 2)})
            if done % config.save_every == 0 or done == end_step or want_stop:
                save_checkpoint(done, elapsed_before + time.perf_counter() - t0)
            bar.update(task, completed=done, loss=f"loss {last_loss:.4f}"
                       + (f"  val {val_loss:.4f}" if val_loss is not None else ""))
            if want_stop and done < end_step:
                stopped = want_stop
                break
    wall = elapsed_before + time.perf_counter() - t0
    final_step = done
    if stopped is None and final_step < config.max_steps:
        stopped = "stop_after"

    result = TrainResult(out_dir=out_dir, final_dir=None, step=final_step, train_loss=last_loss,
                         val_loss=val_loss, tokens_seen=tokens_seen, wall_s=wall, params=n_params,
                         trainable_params=n_train, history=history, stopped=stopped)
    if final_step < config.max_steps:
        return result
    accelerator.wait_for_everyone()
    result.final_dir = out_dir / "final"
    if config.lora is not None and config.merge:
        result.merged_dir = out_dir / "merged"
    if is_main:
        unwrapped = accelerator.unwrap_model(model)
        save_dtype = torch.bfloat16 if config.save_dtype == "bf16" else torch.float32
        final = out_dir / "final"
        if config.lora is not None:
            # the adapter is small: keep it exact; the merged model follows save_dtype
            save_final(unwrapped, tokenizer, final, torch.float32)
            if result.merged_dir is not None:
                save_final(unwrapped.merge_and_unload(), tokenizer, result.merged_dir, save_dtype)
        else:
            save_final(unwrapped, tokenizer, final, save_dtype)
        summary = {"step": final_step, "train_loss": last_loss, "val_loss": val_loss,
                   "tokens_seen": tokens_seen, "wall_s": round(wall, 2), "params": n_params,
                   "trainable_params": n_train, "precision": precision,
                   "final_dir": str(final), "merged_dir": str(result.merged_dir) if result.merged_dir else None}
        (out_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()
    return result


class _GracefulStop:
    """SIGINT/SIGTERM -> finish the step, checkpoint, return; a second signal interrupts at once."""

    def __init__(self) -> None:
        self.reason: str | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[_GracefulStop]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be set from the main thread
            return
        sigs = (signal.SIGINT, signal.SIGTERM)
        previous = {s: signal.getsignal(s) for s in sigs}

        def handler(signum: int, frame: Any) -> None:
            if self.reason is not None:
                raise KeyboardInterrupt
            self.reason = signal.Signals(signum).name

        for s in sigs:
            signal.signal(s, handler)
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def _versions() -> dict[str, str]:
    from llamat_cif.protocol import package_versions

    found = package_versions(("torch", "transformers", "peft", "accelerate", "tokenizers", "numpy", "llamat-cif"))
    return {k: v for k, v in found.items() if v is not None}
