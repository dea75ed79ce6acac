"""Generator models: named from-scratch LLaMA configs and one loader for every kind of checkpoint.

``load_generator(name_or_path)`` accepts

* a local Hugging Face causal-LM folder (any LLaMA-family checkpoint: LLaMA-2/3, LLaMat, or a model
  trained by :mod:`llamat_cif.train`),
* a local peft adapter folder (``adapter_config.json``): its base model is loaded from the local path
  recorded in ``base_model_name_or_path`` and the adapter applied on top,
* the name of a model shipped inside the package (``llamat_cif/models/<name>/``; ``"default"`` is
  :data:`DEFAULT_MODEL`), or of a folder under the models directory (``$LLAMAT_CIF_MODELS``).

It never reaches the network: every ``from_pretrained`` call passes ``local_files_only=True``.
This module imports neither pymatgen nor peft at module level, so the training machine needs
neither to build or load a plain model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamat_cif.paths import models_dir, shipped_models_dir

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

#: Name of the shipped default generator (a folder under ``llamat_cif/models``).
DEFAULT_MODEL = "llamat-cif-small"

#: CIF documents of MP-20-sized cells are up to ~600 tokens; 1024 leaves room for prompts.
CONTEXT_LENGTH = 1024


class ModelLoadError(RuntimeError):
    """A generator could not be found or loaded; the message says what to do."""


@dataclass(frozen=True)
class ModelSize:
    """Shape of a from-scratch LLaMA model (everything else is a LLaMA default)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    num_kv_heads: int | None = None  # None: plain multi-head attention
    note: str = ""


#: Named from-scratch sizes. Parameter counts assume a CIF vocabulary of a few hundred tokens,
#: where the embeddings are a negligible share.
MODEL_CONFIGS: dict[str, ModelSize] = {
    # tests: builds in milliseconds, ~0.2M parameters
    "tiny": ModelSize(64, 2, 4, 176, note="tests; ~0.1-0.2M params"),
    # shipped default: ~6.4M non-embedding parameters, 12.8 MB as bf16 safetensors; trainable
    # on 2 CPU cores in hours (depth over width: CIF syntax is long-range but low-entropy).
    "small": ModelSize(256, 8, 8, 704, note="shipped default, CPU-trainable; ~6.5M params"),
    # GPU size: ~25M params, 4 heads of 96 would be too few; 8 heads of 64.
    "base": ModelSize(512, 8, 8, 1376, note="GPU; ~25M params"),
}


def llama_config(
    name: str,
    vocab_size: int,
    *,
    bos_token_id: int,
    eos_token_id: int,
    pad_token_id: int | None = None,
    context_length: int = CONTEXT_LENGTH,
    dropout: float = 0.0,
) -> LlamaConfig:
    """The ``LlamaConfig`` of a named size.

    Args:
        name: one of :data:`MODEL_CONFIGS` (``tiny``, ``small``, ``base``).
        vocab_size: tokenizer vocabulary size (``len(tokenizer)``).
        bos_token_id: id of ``<s>``.
        eos_token_id: id of ``</s>``.
        pad_token_id: id of ``<pad>``.
        context_length: ``max_position_embeddings``.
        dropout: attention dropout (0 for pretraining, as in nanoGPT/LLaMA).

    Raises:
        ValueError: for an unknown name.
    """
    from transformers import LlamaConfig

    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model config {name!r}; choose one of {sorted(MODEL_CONFIGS)}")
    size = MODEL_CONFIGS[name]
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        num_key_value_heads=size.num_kv_heads or size.num_heads,
        max_position_embeddings=context_length,
        rms_norm_eps=1e-5,
        # small vocab: tying saves little but regularises the rare-token rows
        tie_word_embeddings=True,
        attention_dropout=dropout,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        use_cache=True,
    )


def build_model(
    name: str,
    vocab_size: int,
    *,
    bos_token_id: int,
    eos_token_id: int,
    pad_token_id: int | None = None,
    context_length: int = CONTEXT_LENGTH,
    dropout: float = 0.0,
    seed: int | None = None,
) -> LlamaForCausalLM:
    """A freshly initialised ``LlamaForCausalLM`` of a named size (fp32, on CPU).

    Args:
        name: ``tiny``, ``small`` or ``base``.
        vocab_size: tokenizer vocabulary size.
        bos_token_id: id of ``<s>``.
        eos_token_id: id of ``</s>``.
        pad_token_id: id of ``<pad>``.
        context_length: maximum sequence length.
        dropout: attention dropout.
        seed: when given, seeds torch before initialising, so the same seed gives the same weights.
    """
    import torch
    from transformers import LlamaForCausalLM

    cfg = llama_config(
        name,
        vocab_size,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        context_length=context_length,
        dropout=dropout,
    )
    if seed is not None:
        torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def count_parameters(model: torch.nn.Module, *, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters, counting tied weights once."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def shipped_models() -> list[str]:
    """Names of the models shipped inside the package (folders holding a ``config.json``)."""
    root = shipped_models_dir()
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir()
        if p.is_dir() and ((p / "config.json").is_file() or (p / "adapter_config.json").is_file())
    )


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """Find the folder of a generator: an existing path, a shipped name, or a models-dir name.

    Raises:
        ModelLoadError: when nothing matches; the message lists the shipped models.
    """
    text = str(name_or_path)
    candidate = Path(text).expanduser()
    if candidate.is_dir():
        return candidate.resolve()
    looks_like_path = os.sep in text or text.startswith((".", "~"))
    if not looks_like_path:
        name = DEFAULT_MODEL if text == "default" else text
        for root in (shipped_models_dir(), models_dir()):
            if (root / name).is_dir():
                return (root / name).resolve()
    shipped = shipped_models()
    listing = ", ".join(shipped) if shipped else "none installed"
    if looks_like_path or candidate.exists():
        why = f"{text!r} is not a model folder" if candidate.exists() else f"no such folder: {text}"
    else:
        why = f"{text!r} is neither a local folder nor a known model name"
    raise ModelLoadError(
        f"{why}. Shipped models: {listing} (use 'default' for {DEFAULT_MODEL}); or pass the path "
        f"of a local Hugging Face causal-LM / peft adapter folder, or a folder name under "
        f"{models_dir()} ($LLAMAT_CIF_MODELS). Models are never downloaded."
    )


def dtype_kwargs(dtype: Any) -> dict[str, Any]:
    """``from_pretrained`` dtype keyword for this transformers version (``dtype`` since 4.56)."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    key = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    return {key: dtype}


def _resolve_dtype(dtype: Any, device: str) -> torch.dtype:
    import torch

    if dtype is None:
        # fp32 on CPU (portable, exact); bf16 on GPUs that support it.
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if isinstance(dtype, str):
        table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
                 "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
        if dtype not in table:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(table)}")
        return table[dtype]
    return dtype


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"))


def adapter_base_path(adapter_dir: Path) -> Path:
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise ModelLoadError(f"{adapter_dir}/adapter_config.json names no base_model_name_or_path")
    for candidate in (Path(base).expanduser(), adapter_dir / base):
        if candidate.is_dir() and (candidate / "config.json").is_file():
            return candidate.resolve()
    raise ModelLoadError(
        f"the LoRA adapter in {adapter_dir} was trained on base model {base!r}, which is not a local "
        f"folder here. Put that checkpoint on disk and edit 'base_model_name_or_path' in "
        f"{adapter_dir / 'adapter_config.json'} to its path (models are never downloaded)."
    )


def load_generator(
    name_or_path: str | os.PathLike = "default",
    device: str | None = None,
    dtype: Any = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a generator and its tokenizer, offline.

    Args:
        name_or_path: a local model or adapter folder, ``"default"``, or a shipped model name.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...; default CUDA when available, else CPU.
        dtype: torch dtype or ``"fp32"``/``"bf16"``/``"fp16"``; default fp32 on CPU, bf16 on GPU.

    Returns:
        ``(model, tokenizer)`` with the model in eval mode on ``device``. A peft adapter comes back
        as a ``PeftModel`` (call ``merge_and_unload()`` for a plain model).

    Raises:
        ModelLoadError: unknown name, missing files, or an adapter whose base is not local.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model_path(name_or_path)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = _resolve_dtype(dtype, device)
    is_adapter = (folder / "adapter_config.json").is_file()
    if not is_adapter and not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"{folder} holds neither config.json (a Hugging Face model) nor adapter_config.json "
            f"(a peft adapter)"
        )
    from transformers.utils import logging as hf_logging

    # transformers 5 draws a "Loading weights" tqdm bar per load: a flood in screens and tests, and
    # a 6.5M-parameter model loads in well under a second
    hf_logging.disable_progress_bar()
    try:
        if is_adapter:
            from peft import PeftModel

            base_dir = adapter_base_path(folder)
            base = AutoModelForCausalLM.from_pretrained(
                base_dir, local_files_only=True, **dtype_kwargs(torch_dtype)
            )
            model = PeftModel.from_pretrained(base, folder, local_files_only=True)
            tok_dir = folder if _has_tokenizer(folder) else base_dir
        else:
            model = AutoModelForCausalLM.from_pretrained(
                folder, local_files_only=True, **dtype_kwargs(torch_dtype)
            )
            tok_dir = folder
        if not _has_tokenizer(tok_dir):
            raise ModelLoadError(f"no tokenizer files in {tok_dir}")
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    except ModelLoadError:
        raise
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load the generator in {folder}: {exc}") from exc
    if tokenizer.pad_token_id is None:
        # LLaMA checkpoints ship without a pad token; batched generation needs one.
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    return model, tokenizer
