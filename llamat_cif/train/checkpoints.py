"""The files of a training run folder: checkpoints, the resume check, ``final/`` and the log.

A run folder holds ``checkpoints/step_NNNNNNN/`` (accelerate state plus ``trainer_state.json``;
only complete ones count), ``train_config.json`` (settings, provenance), ``train_log.jsonl`` (one
row per logged step or evaluation) and, once the run completes, ``final/`` (weights, tokenizer and
a copy of ``train_config.json``, loadable by :func:`llamat_cif.model.load_generator`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from llamat_cif.train.config import TrainConfig


def list_checkpoints(out_dir: Path) -> list[Path]:
    """The complete checkpoint folders of a run, oldest first."""
    root = out_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if re.fullmatch(r"step_\d+", p.name) and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder of a run, or ``None``."""
    ckpts = list_checkpoints(Path(out_dir))
    return ckpts[-1] if ckpts else None


# fields that must match for a resumed run to be the same run
_RESUME_KEYS = ("batch_size", "grad_accum", "block_size", "seed", "lr", "warmup_steps", "min_lr_ratio",
                "weight_decay", "lora", "precision")


def check_resume_config(out_dir: Path, config: TrainConfig) -> None:
    """Raise ``ValueError`` when ``config`` differs from the saved run in a setting resume depends on."""
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


def save_final(model: torch.nn.Module, tokenizer: Any, folder: Path, dtype: torch.dtype) -> None:
    """Weights + tokenizer, and the run's ``train_config.json``: the sampler reads the representation
    (``cif`` / ``llamat``) a model was trained on from it, so the folder must carry it when copied."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    from llamat_cif.model import quiet_transformers

    quiet_transformers()
    model = model.to(dtype)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    provenance = folder.parent / "train_config.json"
    if provenance.is_file():
        shutil.copy2(provenance, folder / "train_config.json")


def _iter_log(out_dir: str | os.PathLike) -> Iterator[dict[str, Any]]:
    path = Path(out_dir) / "train_log.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                yield json.loads(line)


def read_log(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of ``out_dir/train_log.jsonl`` (training rows have ``loss``, eval rows ``val_loss``)."""
    return list(_iter_log(out_dir))
