"""One training loop for every generator: from scratch, continued pretraining, and LoRA finetuning.

Three kinds of training data, all served as a deterministic *stream*: item ``k`` of a stream is a
pure function of ``k`` and the seed, so a run that stops at step N and resumes reads exactly the
items the uninterrupted run would have read (the data position saved in a checkpoint is one number).

* :class:`PackedStream` - documents from the corpus builder's token arrays (``train.tokens.npy`` +
  ``train.offsets.npy``), reshuffled every epoch, concatenated, and cut into ``block_size`` blocks.
* :class:`MixedStream` - several streams drawn with set probabilities, e.g. CIF documents with ~3%
  general text for continued pretraining (the share LLaMat kept to preserve language ability).
* :class:`SupervisedStream` - ``(prompt, completion)`` pairs, loss masked on the prompt (the
  instruction task mix of :mod:`llamat_cif.instructions` and the text tasks).

:func:`run_training` is the loop: AdamW (no decay on norms/biases), linear warmup + cosine decay to
``min_lr_ratio * lr``, gradient accumulation, bf16 autocast where it helps, periodic validation
loss, checkpoints (model, optimizer, scheduler, RNG states, step, data position) that resume
exactly, ``train_log.jsonl``, ``train_config.json`` and a rich progress bar. It runs under
``accelerate launch`` unchanged (``accelerate.Accelerator`` does device placement, DDP and gradient
sync). ``out_dir/final/`` is always loadable by :func:`llamat_cif.model.load_generator`.

Entry points: :func:`train_from_corpus` (scratch / continued pretraining) and
:func:`train_supervised` (instruction or text-task finetuning, LoRA or full).

This module must import without pymatgen (the GPU training machine has none).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llamat_cif.model import (
    CONTEXT_LENGTH,
    ModelLoadError,
    build_model,
    count_parameters,
    dtype_kwargs,
)

IGNORE_INDEX = -100  # label value that the Hugging Face loss skips


# ---------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class LoraSettings:
    """peft LoRA settings; defaults are those of LLaMat-CIF / crystal-text-llm."""

    r: int = 8
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (written to ``out_dir/train_config.json``).

    Steps count optimizer updates; one update sees ``batch_size * grad_accum`` sequences per process.
    """

    out_dir: str
    max_steps: int = 2000
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3  # from-scratch small LLaMA; LoRA uses 1e-4 (see lora_defaults)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of lr (nanoGPT/Chinchilla use 0.1)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95  # 0.95 rather than 0.999: steadier for small-batch LM training
    grad_clip: float = 1.0
    eval_every: int = 200
    eval_batches: int = 20
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    # auto | bf16 | fp32; bf16 = autocast, master weights stay fp32. auto = bf16 on GPUs and on CPUs
    # with native bf16 only: on AVX2 CPUs bf16 is emulated and measured 2.5-4x slower than fp32
    precision: str = "auto"
    block_size: int = CONTEXT_LENGTH
    num_workers: int = 0
    # bf16 halves the saved size (the shipped model must stay under ~24 MB); "fp32" keeps it exact
    save_dtype: str = "bf16"
    lora: LoraSettings | None = None
    merge: bool = False  # after LoRA, also write out_dir/merged/ (adapter folded into the weights)

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, not {self.precision!r}")
        if self.save_dtype not in ("bf16", "fp32"):
            raise ValueError(f"save_dtype must be bf16 or fp32, not {self.save_dtype!r}")
        for name in ("max_steps", "batch_size", "grad_accum", "block_size", "eval_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("warmup_steps must be >= 0 and min_lr_ratio in [0, 1]")
        if self.merge and self.lora is None:
            raise ValueError("merge=True needs LoRA settings (there is no adapter to merge)")


def lora_defaults(out_dir: str, **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` with the LLaMat-CIF LoRA recipe (r 8, alpha 32, lr 1e-4 cosine)."""
    base = dict(out_dir=out_dir, lr=1e-4, warmup_steps=20, min_lr_ratio=0.0, weight_decay=0.0,
                lora=LoraSettings(), save_dtype="fp32")
    base.update(overrides)
    return TrainConfig(**base)


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """Rebuild a :class:`TrainConfig` from ``train_config.json`` (its ``"config"`` entry)."""
    d = dict(d)
    lora = d.pop("lora", None)
    if lora is not None:
        lora = LoraSettings(**{**lora, "target_modules": tuple(lora["target_modules"])})
    known = {f for f in TrainConfig.__dataclass_fields__}
    return TrainConfig(lora=lora, **{k: v for k, v in d.items() if k in known})


# ---------------------------------------------------------------------------------------------
# data streams


class Stream:
    """A deterministic, endless sequence of training examples: ``stream[k]`` for any ``k >= 0``."""

    def __getitem__(self, k: int) -> dict[str, np.ndarray]:  # pragma: no cover - interface
        raise NotImplementedError

    def epoch_size(self) -> int:
        """Items per pass over the underlying data."""
        raise NotImplementedError

    def tokens_per_epoch(self) -> int:
        """Tokens per pass over the underlying data."""
        raise NotImplementedError


class PackedStream(Stream):
    """Documents packed into fixed-length blocks, reshuffled every epoch.

    Each epoch draws a fresh document order from ``(seed, epoch)``, concatenates the documents
    (each already ``[bos] + ids + [eos]``) and cuts the stream into ``block_size`` blocks, visited
    in a shuffled order; the tail shorter than a block is dropped. Fresh packing per epoch means a
    document is split at a different place each time instead of always at the same token.

    Args:
        tokens: 1-D token array of concatenated documents.
        offsets: ``n_docs + 1`` document start offsets into ``tokens``.
        block_size: tokens per block. A corpus shorter than one block gives one short block.
        seed: shuffling seed.
        shuffle: ``False`` keeps corpus order (validation).
        keep_tail: also serve the last, shorter block (validation: every held-out token counts).
    """

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, block_size: int, *, seed: int = 0,
                 shuffle: bool = True, keep_tail: bool = False) -> None:
        tokens = np.asarray(tokens)
        offsets = np.asarray(offsets, dtype=np.int64)
        if tokens.ndim != 1 or offsets.ndim != 1 or len(offsets) < 2:
            raise ValueError("tokens must be 1-D and offsets hold n_docs + 1 >= 2 entries")
        if offsets[0] != 0 or offsets[-1] != len(tokens) or np.any(np.diff(offsets) < 0):
            raise ValueError(
                f"offsets must rise from 0 to len(tokens)={len(tokens)}; got {offsets[0]}..{offsets[-1]}"
            )
        self.tokens, self.offsets = tokens, offsets
        self.lengths = np.diff(offsets)
        self.total = int(len(tokens))
        self.block_size = min(block_size, self.total)
        self.n_blocks = (-(-self.total // self.block_size) if keep_tail
                         else self.total // self.block_size)
        self.seed, self.shuffle = seed, shuffle
        self._cache: tuple[int, np.ndarray, np.ndarray] | None = None

    @property
    def n_docs(self) -> int:
        return len(self.lengths)

    def epoch_size(self) -> int:
        return self.n_blocks

    def tokens_per_epoch(self) -> int:
        return min(self.n_blocks * self.block_size, self.total)

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1], self._cache[2]
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(self.n_docs)
            block_order = rng.permutation(self.n_blocks)
        else:
            order = np.arange(self.n_docs)
            block_order = np.arange(self.n_blocks)
        lengths = self.lengths[order]
        starts = self.offsets[:-1][order]
        before = np.cumsum(lengths) - lengths  # position of each document in the epoch stream
        index = np.arange(self.total, dtype=np.int64) + np.repeat(starts - before, lengths)
        stream = self.tokens[index]
        self._cache = (epoch, stream, block_order)
        return stream, block_order

    def __getitem__(self, k: int) -> dict[str, np.ndarray]:
        epoch, i = divmod(int(k), self.n_blocks)
        stream, block_order = self._epoch(epoch)
        b = int(block_order[i]) * self.block_size
        ids = stream[b:b + self.block_size].astype(np.int64)
        return {"input_ids": ids, "labels": ids.copy()}

    @classmethod
    def from_texts(cls, texts: Sequence[str], tokenizer: Any, block_size: int, *, seed: int = 0,
                   shuffle: bool = True, keep_tail: bool = False) -> PackedStream:
        """Tokenize documents as ``[bos] + ids + [eos]`` and pack them."""
        tokens, offsets = tokenize_documents(texts, tokenizer)
        return cls(tokens, offsets, block_size, seed=seed, shuffle=shuffle, keep_tail=keep_tail)


def tokenize_documents(texts: Sequence[str], tokenizer: Any) -> tuple[np.ndarray, np.ndarray]:
    """Token array and offsets of documents, each ``[bos] + ids + [eos]`` (corpus-builder layout)."""
    if not texts:
        raise ValueError("no documents to tokenize")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    docs = [([bos] if bos is not None else []) + ids + ([eos] if eos is not None else [])
            for ids in encoded]
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max else np.int32
    tokens = np.fromiter((t for d in docs for t in d), dtype=dtype, count=int(offsets[-1]))
    return tokens, offsets


class MixedStream(Stream):
    """Items drawn from several streams with set probabilities (deterministic per item index).

    Item ``k`` comes from stream ``j`` with probability ``weights[j]`` and is that stream's item
    ``k``; the other streams skip index ``k``. So the mix fraction holds in expectation (and in
    tokens, since all packed blocks have the same length) and every item is still a pure function
    of ``k``, which keeps resume exact.
    """

    def __init__(self, streams: Sequence[Stream], weights: Sequence[float], *, seed: int = 0) -> None:
        if len(streams) != len(weights) or not streams:
            raise ValueError("need one weight per stream")
        w = np.asarray(weights, dtype=float)
        if np.any(w < 0) or w.sum() <= 0:
            raise ValueError("weights must be >= 0 with a positive sum")
        self.streams = list(streams)
        self.cum = np.cumsum(w / w.sum())
        self.seed = seed

    def source(self, k: int) -> int:
        """Index of the stream that serves item ``k``."""
        u = np.random.default_rng([self.seed, int(k), 0x5EED]).random()
        return int(min(np.searchsorted(self.cum, u, side="right"), len(self.streams) - 1))

    def __getitem__(self, k: int) -> dict[str, np.ndarray]:
        return self.streams[self.source(k)][k]

    def epoch_size(self) -> int:
        return self.streams[0].epoch_size()

    def tokens_per_epoch(self) -> int:
        return self.streams[0].tokens_per_epoch()


class SupervisedStream(Stream):
    """``(prompt, completion)`` pairs as ``[bos] prompt completion [eos]`` with the prompt unscored.

    The prompt length is measured by tokenizing the prompt alone, the usual Alpaca-style recipe; the
    labels of the prompt tokens are ``-100``. Examples longer than ``block_size`` are cut at the end
    (``n_truncated`` counts them). Epochs are reshuffled from ``(seed, epoch)``.
    """

    def __init__(self, pairs: Sequence[tuple[str, str]], tokenizer: Any, block_size: int, *,
                 seed: int = 0, shuffle: bool = True) -> None:
        if not pairs:
            raise ValueError("no (prompt, completion) pairs")
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        prompts = [p for p, _ in pairs]
        fulls = [p + c for p, c in pairs]
        p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        f_ids = tokenizer(fulls, add_special_tokens=False)["input_ids"]
        self.examples: list[tuple[np.ndarray, int]] = []
        self.n_truncated = 0
        head = [bos] if bos is not None else []
        tail = [eos] if eos is not None else []
        for p, f in zip(p_ids, f_ids, strict=True):
            ids = head + f + tail
            n_prompt = len(head) + min(len(p), len(f))
            if len(ids) > block_size:
                self.n_truncated += 1
                ids = ids[:block_size]
            self.examples.append((np.asarray(ids, dtype=np.int64), min(n_prompt, len(ids))))
        self.seed, self.shuffle = seed, shuffle
        self._perm: tuple[int, np.ndarray] | None = None

    def epoch_size(self) -> int:
        return len(self.examples)

    def tokens_per_epoch(self) -> int:
        return sum(len(ids) for ids, _ in self.examples)

    def __getitem__(self, k: int) -> dict[str, np.ndarray]:
        epoch, i = divmod(int(k), len(self.examples))
        if self.shuffle:
            if self._perm is None or self._perm[0] != epoch:
                self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.examples)))
            i = int(self._perm[1][i])
        ids, n_prompt = self.examples[i]
        labels = ids.copy()
        labels[:n_prompt] = IGNORE_INDEX
        return {"input_ids": ids, "labels": labels}


class _StreamView(torch.utils.data.Dataset):
    """Map-style dataset over the global item indices one process reads, in order."""

    def __init__(self, stream: Stream, indices: np.ndarray) -> None:
        self.stream, self.indices = stream, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return self.stream[int(self.indices[i])]


class Collator:
    """Right-pads a list of examples into ``input_ids``, ``attention_mask`` and ``labels`` tensors."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, batch: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        n = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), n), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), n), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for row, b in enumerate(batch):
            m = len(b["input_ids"])
            ids[row, :m] = torch.from_numpy(np.asarray(b["input_ids"], dtype=np.int64))
            labels[row, :m] = torch.from_numpy(np.asarray(b["labels"], dtype=np.int64))
            mask[row, :m] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _process_indices(start_step: int, stop_step: int, config: TrainConfig, rank: int,
                     world: int) -> np.ndarray:
    """Global stream indices that process ``rank`` reads for steps ``[start_step, stop_step)``.

    Micro-batch ``b`` (counted over all steps) of process ``r`` holds items
    ``[(b * world + r) * batch_size, ... + batch_size)``: the data position is a function of the
    step alone, so resuming needs nothing but the step number.
    """
    bs = config.batch_size
    micro = np.arange(start_step * config.grad_accum, stop_step * config.grad_accum, dtype=np.int64)
    first = (micro * world + rank) * bs
    return (first[:, None] + np.arange(bs, dtype=np.int64)[None, :]).reshape(-1)


# ---------------------------------------------------------------------------------------------
# corpus loading


def load_corpus_arrays(corpus_dir: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens, offsets)`` of a corpus split built by ``llamat-cif corpus build`` (memory-mapped)."""
    corpus_dir = Path(corpus_dir)
    tok, off = corpus_dir / f"{split}.tokens.npy", corpus_dir / f"{split}.offsets.npy"
    if not tok.is_file() or not off.is_file():
        raise FileNotFoundError(
            f"{corpus_dir} has no {tok.name}/{off.name}; build it with `llamat-cif corpus build --out {corpus_dir}`"
        )
    return np.load(tok, mmap_mode="r"), np.load(off)


def load_corpus_tokenizer(corpus_dir: str | os.PathLike) -> Any:
    """The tokenizer saved by the corpus builder in ``DIR/tokenizer``."""
    from transformers import AutoTokenizer

    folder = Path(corpus_dir) / "tokenizer"
    if not folder.is_dir():
        raise FileNotFoundError(f"no tokenizer folder in {corpus_dir} (expected {folder})")
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def read_documents(corpus_dir: str | os.PathLike, split: str = "train") -> list[str]:
    """Document texts of ``DIR/documents.<split>.jsonl`` (field ``text``)."""
    path = Path(corpus_dir) / f"documents.{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"missing {path}")
    out = []
    with path.open() as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                out.append(row["text"] if isinstance(row, dict) else str(row))
    return out


def read_text_dir(text_dir: str | os.PathLike, *, suffixes: tuple[str, ...] = (".txt", ".md")) -> list[str]:
    """Plain-text documents for continued pretraining: one per non-empty file under ``text_dir``."""
    root = Path(text_dir)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    texts = [t for p in files if (t := p.read_text(errors="replace").strip())]
    if not texts:
        raise FileNotFoundError(f"no non-empty {'/'.join(suffixes)} files under {root}")
    return texts


# ---------------------------------------------------------------------------------------------
# the loop


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


def _checkpoints(out_dir: Path) -> list[Path]:
    root = out_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if re.fullmatch(r"step_\d+", p.name) and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder of a run, or ``None``."""
    ckpts = _checkpoints(Path(out_dir))
    return ckpts[-1] if ckpts else None


# fields that must match for a resumed run to be the same run
_RESUME_KEYS = ("batch_size", "grad_accum", "block_size", "seed", "lr", "warmup_steps", "min_lr_ratio",
                "weight_decay", "lora", "precision")


def _check_resume_config(out_dir: Path, config: TrainConfig) -> None:
    saved_path = out_dir / "train_config.json"
    if not saved_path.is_file():
        return
    saved = json.loads(saved_path.read_text()).get("config", {})
    now = json.loads(json.dumps(asdict(config)))
    diff = [k for k in _RESUME_KEYS if k in saved and saved[k] != now.get(k)]
    if diff:
        raise ValueError(
            f"cannot resume {out_dir}: {', '.join(f'{k} {saved[k]!r} -> {now[k]!r}' for k in diff)} "
            f"changed since the checkpoint; use a new --out or the original settings"
        )


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


def _save_final(model: torch.nn.Module, tokenizer: Any, folder: Path, dtype: torch.dtype) -> None:
    """Weights + tokenizer, and the run's ``train_config.json``: the sampler reads the representation
    (``cif`` / ``llamat``) a model was trained on from it, so the folder must carry it when copied."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    model = model.to(dtype)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    provenance = folder.parent / "train_config.json"
    if provenance.is_file():
        shutil.copy2(provenance, folder / "train_config.json")


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
        model: a causal LM (already wrapped with peft when training LoRA; see :func:`prepare_model`).
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
        _check_resume_config(out_dir, config)
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
    indices = _process_indices(start_step, end_step, config, rank, world)
    loader = torch.utils.data.DataLoader(
        _StreamView(train_data, indices), batch_size=config.batch_size, shuffle=False,
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
        accelerator.save_state(str(folder))
        if is_main:
            (folder / "trainer_state.json").write_text(json.dumps(
                {"step": step, "tokens_seen": tokens_seen, "wall_s": wall, "world_size": world,
                 "data_position": int((step * config.grad_accum * world) * config.batch_size)}))
            for old in _checkpoints(out_dir)[:-config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    model.train()
    t0 = time.perf_counter()
    last_loss: float | None = None
    val_loss: float | None = None
    window_tokens, window_t = 0, time.perf_counter()
    bar = _progress(is_main and progress)
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
            _save_final(unwrapped, tokenizer, final, torch.float32)
            if result.merged_dir is not None:
                _save_final(unwrapped.merge_and_unload(), tokenizer, result.merged_dir, save_dtype)
        else:
            _save_final(unwrapped, tokenizer, final, save_dtype)
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


def _progress(enabled: bool) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    disable=not enabled)


def _versions() -> dict[str, str]:
    from llamat_cif.protocol import package_versions

    found = package_versions(("torch", "transformers", "peft", "accelerate", "tokenizers", "numpy", "llamat-cif"))
    return {k: v for k, v in found.items() if v is not None}


# ---------------------------------------------------------------------------------------------
# building the model and the high-level entry points


def prepare_model(
    tokenizer: Any,
    *,
    base_model: str | os.PathLike | None = None,
    model_config: str | None = "small",
    lora: LoraSettings | None = None,
    seed: int = 0,
    block_size: int = CONTEXT_LENGTH,
    dropout: float = 0.0,
    load_dtype: torch.dtype | None = None,
) -> torch.nn.Module:
    """A model to train: a fresh named config, or a local checkpoint, optionally LoRA-wrapped.

    Args:
        tokenizer: defines vocabulary and special ids of a fresh model.
        base_model: local folder of a Hugging Face causal LM (never downloaded).
        model_config: ``tiny``/``small``/``base`` for a fresh model (ignored with ``base_model``).
        lora: wrap with a peft LoRA adapter (only the adapter trains).
        seed: initialisation seed of a fresh model.
        block_size: context length of a fresh model.
        dropout: attention dropout of a fresh model.
        load_dtype: dtype to load ``base_model`` in (default fp32).

    Raises:
        ModelLoadError: ``base_model`` is not a local model folder.
    """
    if base_model is not None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            local_model_dir(base_model), local_files_only=True, **dtype_kwargs(load_dtype or torch.float32))
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))
    else:
        if model_config is None:
            raise ValueError("need a base_model or a model_config")
        pad = tokenizer.pad_token_id
        model = build_model(model_config, len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=pad,
                            context_length=max(block_size, CONTEXT_LENGTH), dropout=dropout, seed=seed)
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(seed)
        model = get_peft_model(model, LoraConfig(
            task_type="CAUSAL_LM", r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules)))
    return model


def local_model_dir(base_model: str | os.PathLike) -> Path:
    """The resolved folder of a local Hugging Face model, or a clear :class:`ModelLoadError`."""
    path = Path(base_model).expanduser()
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"base model {base_model}: not a local Hugging Face model folder "
                             f"(no config.json); models are never downloaded")
    return path.resolve()


def _tokenizer_for(base_model: str | os.PathLike | None, fallback: Any | None) -> Any:
    if base_model is None:
        if fallback is None:
            raise ValueError("need a tokenizer (or a base model that has one)")
        return fallback
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(local_model_dir(base_model), local_files_only=True)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def train_from_corpus(
    corpus_dir: str | os.PathLike,
    config: TrainConfig,
    *,
    model_config: str = "small",
    base_model: str | os.PathLike | None = None,
    text_dir: str | os.PathLike | None = None,
    text_fraction: float = 0.03,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    time_limit_s: float | None = None,
) -> TrainResult:
    """Pretrain on a built corpus: from scratch (``model_config``) or continued (``base_model``).

    From scratch, the corpus' own token arrays and tokenizer are used. Continuing a checkpoint with
    a different tokenizer, the documents (``documents.train.jsonl``) are re-tokenized with the
    checkpoint's tokenizer (``documents.val.jsonl`` for validation, else 2% of the training
    documents held out). With ``text_dir``, plain-text
    files make up ``text_fraction`` of the training blocks.
    """
    corpus_dir = Path(corpus_dir)
    corpus_tok = load_corpus_tokenizer(corpus_dir)
    tokenizer = _tokenizer_for(base_model, corpus_tok)
    same_tokenizer = base_model is None or tokenizer.get_vocab() == corpus_tok.get_vocab()
    bs = config.block_size
    describe: dict[str, Any] = {"corpus": str(corpus_dir.resolve()), "base_model": str(base_model) if base_model else None,
                                "model_config": None if base_model else model_config}
    stats = corpus_dir / "stats.json"
    if stats.is_file():
        describe["corpus_stats"] = json.loads(stats.read_text())
    if same_tokenizer:
        train_stream: Stream = PackedStream(*load_corpus_arrays(corpus_dir, "train"), bs, seed=config.seed)
        val_stream: Stream | None = None
        if (corpus_dir / "val.tokens.npy").is_file():
            val_stream = PackedStream(*load_corpus_arrays(corpus_dir, "val"), bs, shuffle=False,
                                      keep_tail=True)
    else:
        train_docs = read_documents(corpus_dir, "train")
        if (corpus_dir / "documents.val.jsonl").is_file():
            val_docs = read_documents(corpus_dir, "val")
        else:  # hold out 2% of the training documents
            n_val = max(1, len(train_docs) // 50)
            order = np.random.default_rng(config.seed).permutation(len(train_docs))
            val_docs = [train_docs[i] for i in order[:n_val]]
            train_docs = [train_docs[i] for i in order[n_val:]]
        train_stream = PackedStream.from_texts(train_docs, tokenizer, bs, seed=config.seed)
        val_stream = PackedStream.from_texts(val_docs, tokenizer, bs, shuffle=False, keep_tail=True)
        describe["retokenized"] = {"train_docs": len(train_docs), "val_docs": len(val_docs)}
    describe["train_tokens"] = train_stream.tokens_per_epoch()
    if text_dir is not None and text_fraction > 0:
        texts = read_text_dir(text_dir)
        text_stream = PackedStream.from_texts(texts, tokenizer, bs, seed=config.seed + 1)
        train_stream = MixedStream([train_stream, text_stream], [1 - text_fraction, text_fraction],
                                   seed=config.seed)
        describe["text"] = {"dir": str(Path(text_dir).resolve()), "files": len(texts),
                            "tokens": text_stream.tokens_per_epoch(), "fraction": text_fraction}
    model = prepare_model(tokenizer, base_model=base_model, model_config=model_config,
                          lora=config.lora, seed=config.seed, block_size=bs)
    return run_training(config, model=model, tokenizer=tokenizer, train_data=train_stream,
                        val_data=val_stream, resume=resume, stop_after=stop_after,
                        describe=describe, progress=progress, time_limit_s=time_limit_s)


def train_supervised(
    pairs: Sequence[tuple[str, str]],
    config: TrainConfig,
    *,
    base_model: str | os.PathLike | None = None,
    tokenizer: Any | None = None,
    model_config: str | None = None,
    val_pairs: Sequence[tuple[str, str]] | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    describe: dict[str, Any] | None = None,
    progress: bool = True,
    time_limit_s: float | None = None,
) -> TrainResult:
    """Finetune on ``(prompt, completion)`` pairs with the loss on the completion only.

    Args:
        pairs: training examples; the completion should end the answer (``eos`` is appended).
        config: run settings; set ``config.lora`` (e.g. :func:`lora_defaults`) for LoRA.
        base_model: local checkpoint folder to finetune (its tokenizer is used).
        tokenizer: tokenizer for a fresh ``model_config`` model (when no ``base_model``).
        model_config: named size for a model trained from scratch on the pairs.
        val_pairs: held-out pairs for the validation loss.
        resume: continue from the newest checkpoint in ``config.out_dir``.
        stop_after: stop after this many steps (checkpointed), as if interrupted.
        describe: provenance merged into ``train_config.json``.
        progress: show a progress bar.
        time_limit_s: stop gracefully (checkpointed) after this much wall time.
    """
    tok = _tokenizer_for(base_model, tokenizer)
    train_stream = SupervisedStream(pairs, tok, config.block_size, seed=config.seed)
    val_stream = SupervisedStream(val_pairs, tok, config.block_size, shuffle=False) if val_pairs else None
    info = {"base_model": str(base_model) if base_model else None, "model_config": model_config,
            "train_pairs": len(pairs), "val_pairs": len(val_pairs or []),
            "truncated_pairs": train_stream.n_truncated, **(describe or {})}
    model = prepare_model(tok, base_model=base_model, model_config=model_config, lora=config.lora,
                          seed=config.seed, block_size=config.block_size)
    return run_training(config, model=model, tokenizer=tok, train_data=train_stream, val_data=val_stream,
                        resume=resume, stop_after=stop_after, describe=info, progress=progress,
                        time_limit_s=time_limit_s)


def with_out_dir(config: TrainConfig, out_dir: str | os.PathLike) -> TrainConfig:
    """Copy of ``config`` writing to ``out_dir``."""
    return replace(config, out_dir=str(out_dir))


def _iter_log(out_dir: str | os.PathLike) -> Iterator[dict[str, Any]]:
    path = Path(out_dir) / "train_log.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                yield json.loads(line)


def read_log(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of ``out_dir/train_log.jsonl`` (training rows have ``loss``, eval rows ``val_loss``)."""
    return list(_iter_log(out_dir))


if __name__ == "__main__":  # python -m llamat_cif.train ... == llamat-cif train ...
    from llamat_cif.cli.train import train as _cli

    _cli()
