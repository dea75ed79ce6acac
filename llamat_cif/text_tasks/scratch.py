"""A from-scratch text model for the SIE tasks: byte-level BPE tokenizer + small LLaMA.

No pretrained weights can be downloaded in some settings (CI, air-gapped machines), yet the text
pipeline should still be exercised end to end on real data. This module trains a byte-level BPE
tokenizer on the SIE training text (any byte sequence stays encodable, so no ``<unk>``) and builds
a LLaMA-architecture model of one of :data:`llamat_cif.model.MODEL_CONFIGS` sizes on it. Such a
model is small and sees a few hundred examples: its scores show that the pipeline works, not what
LLaMat reaches.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llamat_cif.model import MODEL_CONFIGS, ModelSize, build_model, llama_config
from llamat_cif.text_tasks.prompts import PLAIN_SPECIAL_TOKENS, answer_text, plain_prompt
from llamat_cif.text_tasks.tasks import load_task

BOS, EOS, PAD = "<s>", "</s>", "<pad>"


def task_texts(tasks: Iterable[str], split: str = "train", data_dir: str | os.PathLike | None = None) -> list[str]:
    """Full plain-layout documents (prompt + answer) of the given tasks' split, for tokenizer training."""
    out = []
    for name in tasks:
        for ex in load_task(name, split, data_dir=data_dir).examples:
            out.append(plain_prompt(ex.system, ex.question) + answer_text(ex.answer))
    return out


def train_text_tokenizer(texts: Iterable[str], *, vocab_size: int = 4096, min_frequency: int = 2) -> Any:
    """Train a byte-level BPE tokenizer and wrap it for transformers.

    Args:
        texts: Training texts.
        vocab_size: Target vocabulary (256 byte symbols + merges + specials).
        min_frequency: Minimum pair count for a merge.

    Returns:
        A ``PreTrainedTokenizerFast`` with ``<s>``, ``</s>``, ``<pad>``, ``<|im_start|>`` and
        ``<|im_end|>`` as single special tokens and BOS prepended on encoding.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, BOS, EOS, *PLAIN_SPECIAL_TOKENS]
    tok = Tokenizer(models.BPE())
    # add_prefix_space=False: the prompt layout already fixes where spaces are.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(PLAIN_SPECIAL_TOKENS),
    )


#: Extra from-scratch sizes for the text tasks, between ``tiny`` (tests) and ``small`` (CIF):
#: on a shared 2-core CPU ``small`` managed ~14 s per 16x128-token step, too slow for a
#: 15-minute run; ``mini`` is ~5x cheaper and still has four layers to route copied spans.
TEXT_SIZES: dict[str, ModelSize] = {
    "mini": ModelSize(128, 4, 4, 352, note="text tasks on CPU; ~0.8M non-embedding params"),
}


def size_names() -> list[str]:
    """Sizes :func:`build_text_model` accepts."""
    return sorted({*MODEL_CONFIGS, *TEXT_SIZES})


def build_text_model(tokenizer: Any, size: str = "mini", *, context_length: int = 1024, seed: int = 0) -> Any:
    """A freshly initialised ``LlamaForCausalLM`` sized for ``tokenizer``.

    Args:
        tokenizer: Tokenizer from :func:`train_text_tokenizer` (or any with BOS/EOS/PAD).
        size: A name in :data:`TEXT_SIZES` or :data:`llamat_cif.model.MODEL_CONFIGS`.
        context_length: Maximum positions (prompt + answer).
        seed: Initialisation seed.
    """
    import torch
    from transformers import LlamaForCausalLM

    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    if size in MODEL_CONFIGS:
        return build_model(size, len(tokenizer), context_length=context_length, seed=seed, **ids)
    if size not in TEXT_SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {size_names()}")
    shape = TEXT_SIZES[size]
    # Same recipe as llamat_cif.model.llama_config, with the text size's shape.
    cfg = llama_config("tiny", len(tokenizer), context_length=context_length, **ids)
    cfg.hidden_size = shape.hidden_size
    cfg.num_hidden_layers = shape.num_layers
    cfg.num_attention_heads = shape.num_heads
    cfg.num_key_value_heads = shape.num_kv_heads or shape.num_heads
    cfg.intermediate_size = shape.intermediate_size
    cfg.head_dim = shape.hidden_size // shape.num_heads
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def save_text_model(model: Any, tokenizer: Any, out_dir: str | os.PathLike) -> Path:
    """Save model and tokenizer side by side (loadable by ``load_generator``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
