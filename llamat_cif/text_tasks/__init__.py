"""Materials natural-language tasks: LLaMat's structured-information-extraction (SIE) evaluation.

Pipeline, one module each:

    tasks.py     the doping / mof1 / mof2 / discomat sets: loading, validation, malformed lines
    prompts.py   chat prompts (model template or LLaMat's plain layout) and answer targets
    parsing.py   tolerant output parsing (JSON, Python-dict-like, prose around it), never raising
    rates.py     a score with its counts (Rate, PRF), link P/R/F1, Jaro-Winkler
    metrics.py   LLaMat's metrics: doping word and link F1s, discomat table F1s, dispatch per task
    mof_metrics.py  mof1 / mof2 entity word F1s and link F1s
    reference.py the ``llamat`` protocol: LLaMat's scripts' own parsing and rules
    evaluate.py  batched greedy generation with any local causal LM, resumable, scored
    finetune.py  instruction finetuning on the training sets through :mod:`llamat_cif.train`
    scratch.py   byte-level BPE tokenizer + small LLaMA when no pretrained weights are available

Command line: ``llamat-cif text tasks | eval | train``.
"""

from llamat_cif.text_tasks.metrics import score_task
from llamat_cif.text_tasks.parsing import parse_output, parse_prediction
from llamat_cif.text_tasks.tasks import TASKS, TaskError, TextExample, get_task, load_task

__all__ = [
    "TASKS",
    "TaskError",
    "TextExample",
    "get_task",
    "load_task",
    "parse_output",
    "parse_prediction",
    "score_task",
]
