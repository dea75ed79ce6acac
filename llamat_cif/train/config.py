"""The settings of a training run (:class:`TrainConfig`) and of an alignment run (:class:`AlignConfig`).

Each is a frozen dataclass written beside the run's output (``train_config.json``,
``align_config.json``) so that a run can be repeated or resumed exactly. The LoRA adapter shape,
:class:`~llamat_cif.model.LoraSettings`, lives with the models it wraps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

from llamat_cif.model import CONTEXT_LENGTH, LoraSettings
from llamat_cif.protocol import E_HULL_METASTABLE

# ---------------------------------------------------------------------------------------------
# training


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


def with_out_dir(config: TrainConfig, out_dir: str | os.PathLike) -> TrainConfig:
    """Copy of ``config`` writing to ``out_dir``."""
    return replace(config, out_dir=str(out_dir))


# ---------------------------------------------------------------------------------------------
# alignment

#: reward of a sample that is invalid, does not parse or fails to relax (below any relaxed sample)
INVALID_REWARD = -2.0


@dataclass(frozen=True)
class AlignConfig:
    """One alignment run (written to ``out_dir/align_config.json``)."""

    out_dir: str
    model: str = "default"  # shipped name, model folder or peft adapter folder
    rounds: int = 4
    prompts: int = 16  # prompts per round
    samples_per_prompt: int = 6
    conditional: float = 0.5  # share of prompts that are formula headers from the training set
    dataset: str = "mp20"  # training compositions for prompts, and the novelty reference (train split)
    seed: int = 0
    temperature: float | None = None  # None: the model's recommended sampling (T 0.7 for the shipped one)
    top_p: float | None = None
    max_new_tokens: int = 1000
    # reward: a short relaxation with an ML potential, then E_hull on the MP-20 hull
    potential: str = "chgnet"
    relax_steps: int = 100  # FIRE steps of the short relaxation
    fmax: float = 0.1  # eV/Å
    relax_time_limit_s: float = 120.0
    e_hull_cap: float = 1.0  # reward = -min(E_hull, cap), eV/atom
    invalid_reward: float = INVALID_REWARD
    metastable: float = E_HULL_METASTABLE  # eV/atom, for the per-round record
    # pairs and DPO update
    pair_margin: float = 0.05  # eV/atom: a relaxed, eligible rival loses only when this much worse
    pairs_per_prompt: int = 3
    # a sample matching one that won a pair in an earlier round is ineligible too (not only
    # duplicates within the round): winners must be new crystals, which keeps the policy from
    # sharpening onto a few of them
    cross_round_unique: bool = True
    # no structure family (anonymous formula + space group) may hold more than this share of the
    # run's winners (2 always allowed): a per-crystal rule cannot stop a collapse onto one family
    # (6 rounds without it: 899 of 989 valid samples ternary, led by equiatomic RE-In-Ag); 0: off
    family_share: float = 0.05
    beta: float = 0.1
    sft_weight: float = 0.2
    lr: float = 3e-5
    epochs: int = 2
    batch_size: int = 8
    lora: bool = False  # train a fresh LoRA adapter instead of all weights (adapters always train as adapters)
    device: str | None = None
    threads: int | None = 1
    # processes that score (validate, relax, place on the hull) a prompt's samples while the policy
    # samples the next prompt; 0: score in this process after the round's sampling
    score_workers: int = 0

    def __post_init__(self) -> None:
        if self.score_workers < 0:
            raise ValueError(f"score_workers must be >= 0, got {self.score_workers}")
        for name in ("rounds", "prompts", "samples_per_prompt", "epochs", "batch_size", "pairs_per_prompt",
                     "relax_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.samples_per_prompt < 2:
            raise ValueError("samples_per_prompt must be >= 2 (pairs are formed within a prompt)")
        if not 0.0 <= self.family_share <= 1.0:
            raise ValueError(f"family_share must be in [0, 1], got {self.family_share}")
        if not 0.0 <= self.conditional <= 1.0:
            raise ValueError(f"conditional must be in [0, 1], got {self.conditional}")
        if self.beta <= 0 or self.lr <= 0 or self.sft_weight < 0 or self.pair_margin < 0:
            raise ValueError("beta and lr must be > 0, sft_weight and pair_margin >= 0")
        if self.e_hull_cap <= 0 or self.invalid_reward >= -self.e_hull_cap:
            raise ValueError("e_hull_cap must be > 0 and invalid_reward below -e_hull_cap")
