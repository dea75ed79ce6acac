"""Materials natural-language tasks: LLaMat's structured-information-extraction (SIE) evaluation.

Pipeline, one module each:

    tasks.py     the doping / mof1 / mof2 / discomat sets: loading, validation, malformed lines
    prompts.py   chat prompts (model template or LLaMat's plain layout) and answer targets
    parsing.py   tolerant output parsing (JSON, Python-dict-like, prose around it), never raising
    metrics.py   LLaMat's metrics: word-level F1s, link F1s, Jaro-Winkler, exact match, table F1s
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
