"""The policy that alignment trains: loading it (fp32, adapter or fresh LoRA), one DPO update with
trl on a round's pairs, saving it, and sequence log-probabilities.

The update is ``trl``'s ``DPOTrainer`` on the exact token ids the sampler drew (sigmoid DPO loss plus
``sft_weight`` x the NLL of the chosen sample), with the *pre-alignment* model as the fixed reference.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from llamat_cif.model import quiet_transformers
from llamat_cif.train.config import AlignConfig


def sequence_logps(model, ids: Sequence[Sequence[int]], bos_id: int) -> np.ndarray:
    """Sum of log-probabilities of each token sequence after BOS under ``model`` (no grad)."""
    import torch

    out = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for seq in ids:
            x = torch.tensor([[bos_id, *seq]], device=device)
            logits = model(input_ids=x).logits[0, :-1].float()
            lp = torch.log_softmax(logits, -1).gather(1, x[0, 1:, None])[:, 0]
            out.append(float(lp.sum()))
    return np.asarray(out)


def load_policy(cfg: AlignConfig, folder: str | Path, trainable: bool):
    """Load a generator in fp32 (small DPO steps vanish in bf16); an adapter stays an adapter,
    trainable when asked; ``cfg.lora`` wraps a plain model in a fresh LoRA adapter."""
    from llamat_cif.model import load_generator, resolve_model_path

    folder = resolve_model_path(folder)
    model, tok = load_generator(str(folder), device=cfg.device, dtype="fp32")
    is_peft = hasattr(model, "peft_config")
    if is_peft:  # saved adapters must name their base by absolute path (relative names break on copy)
        from llamat_cif.model import adapter_base_path

        model.peft_config["default"].base_model_name_or_path = str(adapter_base_path(Path(folder)))
    if trainable:
        if is_peft:
            for n, p in model.named_parameters():
                p.requires_grad = "lora_" in n
        elif cfg.lora:
            from llamat_cif.model import LoraSettings, add_lora

            model.config._name_or_path = str(folder)
            model = add_lora(model, LoraSettings())
    return model, tok


def save_policy(model, tokenizer, source: Path, dest: Path, cfg: AlignConfig) -> None:
    """Save the round's policy (fp32 weights or the adapter) with the tokenizer and the source's
    sampling and training records, to a temporary folder renamed into place."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    for name in ("generation_config.json", "train_config.json"):
        if (source / name).is_file() and not (tmp / name).is_file():
            shutil.copy(source / name, tmp / name)
    (tmp / "align_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def dpo_update(model, ref_model, tokenizer, samples: pd.DataFrame, pairs: pd.DataFrame, cfg: AlignConfig,
                round_index: int, work: Path) -> dict:
    """One DPO pass over the round's pairs with trl; returns the trainer's last logged metrics."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    class _PreTokenized(DPOTrainer):
        """trl's trainer on the exact token ids the sampler drew (no re-tokenization of text)."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    ids = dict(zip(samples["id"], samples["token_ids"], strict=True))
    bos = [tokenizer.bos_token_id]
    ds = Dataset.from_list([{"prompt_ids": bos, "chosen_ids": [int(t) for t in ids[p.chosen]],
                             "rejected_ids": [int(t) for t in ids[p.rejected]]} for p in pairs.itertuples()])

    use_cpu = next(model.parameters()).device.type == "cpu"
    quiet_transformers()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        args = DPOConfig(
            output_dir=str(work), per_device_train_batch_size=cfg.batch_size, num_train_epochs=cfg.epochs,
            learning_rate=cfg.lr, beta=cfg.beta, loss_type=["sigmoid", "sft"],
            loss_weights=[1.0, cfg.sft_weight], lr_scheduler_type="constant", warmup_steps=0, report_to=[],
            save_strategy="no", logging_steps=1, use_cpu=use_cpu, disable_tqdm=True,
            seed=int(np.random.SeedSequence([cfg.seed, round_index]).generate_state(1)[0] % 2**31),
            max_length=cfg.max_new_tokens + 2, remove_unused_columns=False, bf16=False, fp16=False)
        trainer = _PreTokenized(model=model, ref_model=ref_model, args=args, train_dataset=ds,
                                processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)  # the round record keeps the metrics
        trainer.train()
    model.eval()
    logs = [r for r in trainer.state.log_history if "loss" in r]
    last = logs[-1] if logs else {}
    keys = ("loss", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected")
    return {"steps": int(trainer.state.global_step), **{k: float(last[k]) for k in keys if k in last},
            "first_loss": float(logs[0]["loss"]) if logs else None}
