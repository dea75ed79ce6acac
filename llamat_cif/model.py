"""Generator models: named from-scratch LLaMA configs, one loader for every kind of checkpoint, and
the model a training run starts from.

``load_generator(name_or_path)`` accepts

* a local Hugging Face causal-LM folder (any LLaMA-family checkpoint: LLaMA-2/3, LLaMat, or a model
  trained by :mod:`llamat_cif.train`),
* a local peft adapter folder (``adapter_config.json``): its base model is loaded from the local path
  recorded in ``base_model_name_or_path`` and the adapter applied on top,
* the name of a model shipped inside the package (``llamat_cif/models/<name>/``; ``"default"`` is
  :data:`DEFAULT_MODEL`), or of a folder under the models directory (``$LLAMAT_CIF_MODELS``).

:func:`prepare_model` builds what a training run trains: a fresh named size or a local checkpoint,
optionally wrapped in a LoRA adapter (:class:`LoraSettings`, :func:`add_lora`).

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


@dataclass(frozen=True)
class LoraSettings:
    """peft LoRA settings; defaults are those of LLaMat-CIF / crystal-text-llm."""

    r: int = 8
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")


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


def quiet_transformers() -> None:
    """Switch off transformers' tqdm bars ("Loading weights", "Writing model shards"): one per
    load or save is a flood in screens, training runs and tests, and every command of the toolkit
    draws its own rich progress. Process-wide, like transformers' own switch."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


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
    quiet_transformers()  # a 6.5M-parameter model loads in well under a second
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


# ---------------------------------------------------------------------------------------------
# the model a training run starts from


def add_lora(model: PreTrainedModel, lora: LoraSettings, *, seed: int | None = None) -> PreTrainedModel:
    """``model`` wrapped in a fresh peft LoRA adapter (only the adapter trains).

    Args:
        model: the causal LM to adapt.
        lora: adapter shape and dropout.
        seed: when given, seeds torch first, so the same seed gives the same adapter weights.
    """
    from peft import LoraConfig, get_peft_model

    if seed is not None:
        import torch

        torch.manual_seed(seed)
    return get_peft_model(model, LoraConfig(
        task_type="CAUSAL_LM", r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules)))


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
    import torch

    if base_model is not None:
        from transformers import AutoModelForCausalLM

        quiet_transformers()
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
        model = add_lora(model, lora, seed=seed)
    return model


def local_model_dir(base_model: str | os.PathLike) -> Path:
    """The resolved folder of a local Hugging Face model, or a clear :class:`ModelLoadError`."""
    path = Path(base_model).expanduser()
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"base model {base_model}: not a local Hugging Face model folder "
                             f"(no config.json); models are never downloaded")
    return path.resolve()


def tokenizer_for(base_model: str | os.PathLike | None, fallback: Any | None) -> Any:
    """The tokenizer of a local ``base_model`` (pad = eos where it has none), else ``fallback``."""
    if base_model is None:
        if fallback is None:
            raise ValueError("need a tokenizer (or a base model that has one)")
        return fallback
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(local_model_dir(base_model), local_files_only=True)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok
