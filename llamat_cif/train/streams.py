"""What a training run reads: deterministic data streams, the collator, and the corpus files.

Three kinds of training data, all served as a deterministic *stream*: item ``k`` of a stream is a
pure function of ``k`` and the seed, so a run that stops at step N and resumes reads exactly the
items the uninterrupted run would have read (the data position saved in a checkpoint is one number).

* :class:`PackedStream` - documents from the corpus builder's token arrays (``train.tokens.npy`` +
  ``train.offsets.npy``), reshuffled every epoch, concatenated, and cut into ``block_size`` blocks.
* :class:`MixedStream` - several streams drawn with set probabilities, e.g. CIF documents with ~3%
  general text for continued pretraining (the share LLaMat kept to preserve language ability).
* :class:`SupervisedStream` - ``(prompt, completion)`` pairs, loss masked on the prompt (the
  instruction task mix of :mod:`llamat_cif.instructions` and the text tasks).

:func:`process_indices` lays the items out over processes and steps, :class:`Collator` pads a
micro-batch. The corpus readers (:func:`load_corpus_arrays`, :func:`load_corpus_tokenizer`,
:func:`read_documents`, :func:`read_text_dir`) read the folder written by ``llamat-cif corpus build``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llamat_cif.train.config import TrainConfig

IGNORE_INDEX = -100  # label value that the Hugging Face loss skips

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


class StreamView(torch.utils.data.Dataset):
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


def process_indices(start_step: int, stop_step: int, config: TrainConfig, rank: int,
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
