"""Instruction finetuning on the SIE training sets, through the project's one training loop.

Examples become ``(prompt, completion)`` pairs (:mod:`llamat_cif.text_tasks.prompts`: the same
prompt the evaluator builds, the canonical JSON answer closed by ``<|im_end|>``) and go to
:func:`llamat_cif.train.train_supervised`, which masks the loss on the prompt. Two starting points:

* ``base_model``: a local Hugging Face checkpoint, adapted with LoRA by default (LLaMat-CIF recipe:
  r 8, alpha 32, lr 1e-4) or fully finetuned;
* ``scratch_size``: no pretrained weights at all. A byte-level BPE tokenizer is trained on the
  training split's text and a fresh LLaMA of that size is trained on the pairs. Because such a
  model knows no language, ``lm_fraction`` of its training items can be plain language-modelling
  blocks of the same training documents (loss on every token) so it also learns from the prompts'
  text, not only from the few answer tokens; both streams come from :mod:`llamat_cif.train`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from llamat_cif.text_tasks.prompts import build_prompt, completion_text
from llamat_cif.text_tasks.tasks import TextExample, get_task, load_task

#: Tasks with a training split (discomat is released as a test set only).
TRAINABLE = ("doping", "mof1", "mof2")


@dataclass(frozen=True)
class TextTrainConfig:
    """Settings of one SIE finetuning run (written to ``out_dir/text_train_config.json``).

    Attributes:
        tasks: Training tasks (subset of :data:`TRAINABLE`).
        out_dir: Run folder (``out_dir/final`` is the model to evaluate).
        base_model: Local checkpoint folder to adapt; ``None`` trains from scratch.
        scratch_size: Model size for a from-scratch run (:func:`scratch.size_names`).
        vocab_size: BPE vocabulary of a from-scratch tokenizer.
        lora: Use LoRA on ``base_model`` (ignored from scratch).
        lora_r: LoRA rank.
        lora_alpha: LoRA alpha.
        merge: Also write the merged model (LoRA only).
        max_steps: Optimizer steps.
        batch_size: Sequences per step.
        grad_accum: Micro-batches per step.
        lr: Peak learning rate (``None``: 1e-4 for LoRA, 1e-3 otherwise).
        warmup_steps: Linear warmup steps.
        block_size: Longest sequence (longer pairs are cut at the end).
        lm_fraction: Share of training items that are LM blocks of the training documents.
        lm_block_size: Length of those blocks (short, like the doping pairs, to waste no padding).
        val_fraction: Share of training examples held out for the validation loss.
        limit: Use at most this many training examples per task.
        seed: Seed of the split, the initialisation and the data order.
        precision: ``auto``/``bf16``/``fp32``.
        chat_template: ``auto``/``never``/``always`` (must match evaluation).
        eval_every: Validation interval (steps).
        save_every: Checkpoint interval (steps).
        data_dir: Data folder override.
    """

    tasks: tuple[str, ...]
    out_dir: str
    base_model: str | None = None
    scratch_size: str = "mini"
    vocab_size: int = 4096
    lora: bool = True
    lora_r: int = 8
    lora_alpha: int = 32
    merge: bool = False
    max_steps: int = 500
    batch_size: int = 16
    grad_accum: int = 1
    lr: float | None = None
    warmup_steps: int = 20
    block_size: int = 1024
    lm_fraction: float = 0.0
    lm_block_size: int = 128
    val_fraction: float = 0.05
    limit: int | None = None
    seed: int = 0
    # fp32, not bf16 autocast: on this project's shared 2-core CPUs bf16 measured 2-3x slower
    # per step for the tiny/small sizes (no native bf16 matmul on those cores).
    precision: str = "fp32"
    chat_template: str = "auto"
    eval_every: int = 100
    save_every: int = 200
    data_dir: str | None = None

    def __post_init__(self) -> None:
        bad = [t for t in self.tasks if t not in TRAINABLE]
        if bad or not self.tasks:
            raise ValueError(f"trainable text tasks are {', '.join(TRAINABLE)}; got {self.tasks}")
        if not 0 <= self.lm_fraction < 1 or not 0 <= self.val_fraction < 1:
            raise ValueError("lm_fraction and val_fraction must be in [0, 1)")


def expand_train_tasks(task: str) -> tuple[str, ...]:
    """``all`` -> every task with a training split; otherwise that one task."""
    if task == "all":
        return TRAINABLE
    get_task(task)
    if task not in TRAINABLE:
        raise ValueError(f"{task} has no training split; trainable: {', '.join(TRAINABLE)}")
    return (task,)


def training_examples(config: TextTrainConfig) -> tuple[list[TextExample], list[TextExample], dict[str, Any]]:
    """Train and validation examples of the configured tasks, with a per-task report."""
    rng = random.Random(config.seed)
    train, val = [], []
    report: dict[str, Any] = {}
    for name in config.tasks:
        ts = load_task(name, "train", data_dir=config.data_dir, limit=config.limit)
        exs = list(ts.examples)
        rng.shuffle(exs)
        n_val = int(round(len(exs) * config.val_fraction))
        val += exs[:n_val]
        train += exs[n_val:]
        report[name] = {"file": str(ts.path), "examples": len(ts.examples), "train": len(exs) - n_val,
                        "val": n_val, "malformed": [asdict(m) for m in ts.malformed]}
    return train, val, report


def sft_pairs(examples: Sequence[TextExample], tokenizer: Any, *, chat_template: str = "auto") -> list[tuple[str, str]]:
    """``(prompt, completion)`` pairs exactly as the evaluator will prompt.

    The trainer puts BOS in front itself; a chat template that writes the BOS text is stripped of it
    so the model does not learn a doubled BOS.
    """
    bos = getattr(tokenizer, "bos_token", None)
    out = []
    for ex in examples:
        prompt = build_prompt(ex, tokenizer, chat_template=chat_template)
        if bos and prompt.startswith(bos):
            prompt = prompt[len(bos):]
        out.append((prompt, completion_text(ex, tokenizer, chat_template=chat_template)))
    return out


def finetune(config: TextTrainConfig, *, progress: bool = True, stop_after: int | None = None,
             resume: bool = False) -> Any:
    """Run one SIE finetuning (see the module docstring).

    Returns:
        The :class:`llamat_cif.train.TrainResult`; ``result.final_dir`` (or ``merged_dir``) is the
        model to pass to ``llamat-cif text eval --model``.
    """
    from llamat_cif.model import LoraSettings
    from llamat_cif.train.config import TrainConfig, lora_defaults
    from llamat_cif.train.loop import run_training
    from llamat_cif.train.recipes import train_supervised
    from llamat_cif.train.streams import MixedStream, PackedStream, SupervisedStream

    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_ex, val_ex, report = training_examples(config)
    describe: dict[str, Any] = {"text_tasks": report, "text_train_config": asdict(config)}
    scratch = config.base_model is None
    use_lora = config.lora and not scratch
    lr = config.lr if config.lr is not None else (1e-4 if use_lora else 1e-3)
    if use_lora:
        tcfg = lora_defaults(
            str(out), lora=LoraSettings(r=config.lora_r, alpha=config.lora_alpha), merge=config.merge,
        )
    else:
        tcfg = TrainConfig(out_dir=str(out))
    tcfg = replace(
        tcfg, max_steps=config.max_steps, batch_size=config.batch_size, grad_accum=config.grad_accum,
        lr=lr, warmup_steps=config.warmup_steps, block_size=config.block_size, seed=config.seed,
        precision=config.precision, eval_every=config.eval_every, save_every=config.save_every,
        eval_batches=max(1, -(-len(val_ex) // config.batch_size)),
        # a from-scratch text model is small; fp32 keeps the saved weights exact
        save_dtype="fp32",
    )
    if scratch:
        from llamat_cif.text_tasks.prompts import answer_text, plain_prompt
        from llamat_cif.text_tasks.scratch import train_text_tokenizer

        # Only the training split's text: the tokenizer must not have seen the test passages.
        docs = [plain_prompt(e.system, e.question) + answer_text(e.answer) for e in train_ex]
        tokenizer = train_text_tokenizer(docs, vocab_size=config.vocab_size)
        tokenizer.save_pretrained(out / "tokenizer")
        describe["tokenizer"] = {"kind": "byte-level BPE trained on the training split", "vocab": len(tokenizer),
                                 "documents": len(docs)}
    else:
        from transformers import AutoTokenizer

        # The same tokenizer train_supervised loads from the base model; needed here for its chat
        # template, so that training prompts are the evaluator's prompts.
        tokenizer = AutoTokenizer.from_pretrained(Path(config.base_model).expanduser().resolve(),
                                                  local_files_only=True)
    pairs = sft_pairs(train_ex, tokenizer, chat_template=config.chat_template)
    val_pairs = sft_pairs(val_ex, tokenizer, chat_template=config.chat_template) if val_ex else None
    (out / "text_train_config.json").write_text(json.dumps(describe, indent=2, default=str))
    if not scratch:
        return train_supervised(
            pairs, tcfg, base_model=config.base_model, val_pairs=val_pairs,
            describe=describe, progress=progress, stop_after=stop_after, resume=resume,
        )
    # From scratch: the same loop, fed the supervised pairs, optionally mixed with packed LM
    # blocks of the full training documents (loss on every token).
    from llamat_cif.text_tasks.scratch import build_text_model

    sup = SupervisedStream(pairs, tokenizer, tcfg.block_size, seed=config.seed)
    train_data: Any = sup
    describe.update({"train_pairs": len(pairs), "val_pairs": len(val_pairs or []),
                     "truncated_pairs": sup.n_truncated, "lm_fraction": config.lm_fraction,
                     "scratch_size": config.scratch_size})
    if config.lm_fraction > 0:
        lm = PackedStream.from_texts([p + c for p, c in pairs], tokenizer, config.lm_block_size,
                                     seed=config.seed + 1)
        train_data = MixedStream([sup, lm], [1 - config.lm_fraction, config.lm_fraction], seed=config.seed)
        describe["lm_tokens_per_epoch"] = lm.tokens_per_epoch()
    val = SupervisedStream(val_pairs, tokenizer, tcfg.block_size, shuffle=False) if val_pairs else None
    model = build_text_model(tokenizer, config.scratch_size, context_length=config.block_size, seed=config.seed)
    return run_training(tcfg, model=model, tokenizer=tokenizer, train_data=train_data, val_data=val,
                        describe=describe, progress=progress, stop_after=stop_after, resume=resume)
