"""The two ways a training run starts: pretraining on a built corpus, finetuning on pairs.

:func:`train_from_corpus` trains from scratch (a named size) or continues a checkpoint on the
corpus of ``llamat-cif corpus build``, optionally mixed with plain text; :func:`train_supervised`
finetunes (LoRA or full) on ``(prompt, completion)`` pairs with the loss on the completion. Both
build the streams (:mod:`llamat_cif.train.streams`) and the model
(:func:`llamat_cif.model.prepare_model`) and hand them to :func:`llamat_cif.train.loop.run_training`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Unpack

import numpy as np

from llamat_cif.model import prepare_model, tokenizer_for
from llamat_cif.train.config import TrainConfig
from llamat_cif.train.loop import RunOptions, TrainResult, run_training
from llamat_cif.train.streams import (
    MixedStream,
    PackedStream,
    Stream,
    SupervisedStream,
    load_corpus_arrays,
    load_corpus_tokenizer,
    read_documents,
    read_text_dir,
)


def train_from_corpus(
    corpus_dir: str | os.PathLike,
    config: TrainConfig,
    *,
    model_config: str = "small",
    base_model: str | os.PathLike | None = None,
    text_dir: str | os.PathLike | None = None,
    text_fraction: float = 0.03,
    **run: Unpack[RunOptions],
) -> TrainResult:
    """Pretrain on a built corpus: from scratch (``model_config``) or continued (``base_model``).

    From scratch, the corpus' own token arrays and tokenizer are used. Continuing a checkpoint with
    a different tokenizer, the documents (``documents.train.jsonl``) are re-tokenized with the
    checkpoint's tokenizer (``documents.val.jsonl`` for validation, else 2% of the training
    documents held out). With ``text_dir``, plain-text files make up ``text_fraction`` of the
    training blocks. ``run`` (``resume``, ``stop_after``, ``progress``, ``time_limit_s``) goes to
    :func:`~llamat_cif.train.loop.run_training` unchanged.
    """
    corpus_dir = Path(corpus_dir)
    corpus_tok = load_corpus_tokenizer(corpus_dir)
    tokenizer = tokenizer_for(base_model, corpus_tok)
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
                        val_data=val_stream, describe=describe, **run)


def train_supervised(
    pairs: Sequence[tuple[str, str]],
    config: TrainConfig,
    *,
    base_model: str | os.PathLike | None = None,
    tokenizer: Any | None = None,
    model_config: str | None = None,
    val_pairs: Sequence[tuple[str, str]] | None = None,
    describe: dict[str, Any] | None = None,
    **run: Unpack[RunOptions],
) -> TrainResult:
    """Finetune on ``(prompt, completion)`` pairs with the loss on the completion only.

    Args:
        pairs: training examples; the completion should end the answer (``eos`` is appended).
        config: run settings; set ``config.lora`` (e.g. :func:`~llamat_cif.train.config.lora_defaults`)
            for LoRA.
        base_model: local checkpoint folder to finetune (its tokenizer is used).
        tokenizer: tokenizer for a fresh ``model_config`` model (when no ``base_model``).
        model_config: named size for a model trained from scratch on the pairs.
        val_pairs: held-out pairs for the validation loss.
        describe: provenance merged into ``train_config.json``.
        **run: ``resume`` (continue from the newest checkpoint in ``config.out_dir``), ``stop_after``
            (stop after this many steps, checkpointed, as if interrupted), ``progress`` (show a
            progress bar), ``time_limit_s`` (stop gracefully, checkpointed, after this much wall
            time); see :func:`~llamat_cif.train.loop.run_training`.
    """
    tok = tokenizer_for(base_model, tokenizer)
    train_stream = SupervisedStream(pairs, tok, config.block_size, seed=config.seed)
    val_stream = SupervisedStream(val_pairs, tok, config.block_size, shuffle=False) if val_pairs else None
    info = {"base_model": str(base_model) if base_model else None, "model_config": model_config,
            "train_pairs": len(pairs), "val_pairs": len(val_pairs or []),
            "truncated_pairs": train_stream.n_truncated, **(describe or {})}
    model = prepare_model(tok, base_model=base_model, model_config=model_config, lora=config.lora,
                          seed=config.seed, block_size=config.block_size)
    return run_training(config, model=model, tokenizer=tok, train_data=train_stream, val_data=val_stream,
                        describe=info, **run)
