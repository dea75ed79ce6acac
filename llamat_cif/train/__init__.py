"""Training: one loop for every generator, and stability alignment on the model's own samples.

The package, from settings to entry points (arrows point down only)::

    config.py       TrainConfig (+ lora_defaults), AlignConfig: what determines a run
    streams.py      deterministic data streams, the collator, the corpus readers
    checkpoints.py  the run folder: checkpoints, resume check, final/, train_log.jsonl
    loop.py         run_training: AdamW, warmup + cosine, accumulation, bf16, evaluation, resume
    recipes.py      train_from_corpus (scratch / continued pretraining), train_supervised (finetuning)
    align.py        run_align: sample -> score -> pair -> DPO update rounds (trl)
    align_scores.py the stability reward, pairs, round records and plots of alignment
    align_policy.py the aligned policy: load, DPO update, save

The model a run starts from (fresh size, checkpoint, LoRA wrap) is built by
:func:`llamat_cif.model.prepare_model`. The command line is ``llamat-cif train`` (also
``python -m llamat_cif train`` and ``accelerate launch -m llamat_cif train ...``). Everything but
alignment imports without pymatgen (the GPU training machine has none).
"""

from llamat_cif.train.checkpoints import latest_checkpoint, read_log
from llamat_cif.train.config import TrainConfig, config_from_dict, lora_defaults, with_out_dir
from llamat_cif.train.loop import TrainResult, run_training
from llamat_cif.train.recipes import train_from_corpus, train_supervised

__all__ = [
    "TrainConfig",
    "TrainResult",
    "config_from_dict",
    "latest_checkpoint",
    "lora_defaults",
    "read_log",
    "run_training",
    "train_from_corpus",
    "train_supervised",
    "with_out_dir",
]
