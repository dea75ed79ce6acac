"""Run a local causal LM on the SIE test sets, save its answers as it goes, score them.

Layout of an evaluation folder ``OUT``::

    OUT/config.json                  resolved EvalConfig, package versions, hardware
    OUT/<task>/predictions.jsonl     one line per example, appended batch by batch (resumable)
    OUT/<task>/metrics.json          scores (``strict`` and ``llamat`` protocols), counts
    OUT/summary.json                 headline scores of every task, wall times

A run that stops part-way resumes where it stopped: examples whose id is already in
``predictions.jsonl`` are not generated again. Generation is greedy (no sampling), so a resumed run
gives the same answers as an uninterrupted one.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llamat_cif.protocol import hardware, package_versions
from llamat_cif.text_tasks.metrics import HEADLINE, score_task
from llamat_cif.text_tasks.parsing import cut_at_stop, parse_prediction
from llamat_cif.text_tasks.prompts import IM_END, build_prompt, has_chat_template, stop_strings
from llamat_cif.text_tasks.rates import Rate
from llamat_cif.text_tasks.reference import PROTOCOL_NOTE, score_llamat
from llamat_cif.text_tasks.tasks import (
    TASKS,
    TaskSet,
    TextExample,
    answer_keys,
    get_task,
    load_task,
)

#: Progress callback: (task, n_done, n_total).
Progress = Callable[[str, int, int], None]
#: the packages whose versions a text evaluation records
TEXT_PACKAGES = ("llamat-cif", "torch", "transformers", "peft", "tokenizers", "jellyfish")


@dataclass(frozen=True)
class EvalConfig:
    """Everything that determines an evaluation run.

    Attributes:
        tasks: Task names to evaluate.
        model: Local model folder (Hugging Face causal LM or peft adapter folder) or model name
            known to :func:`llamat_cif.model.load_generator`.
        out_dir: Output folder.
        split: Split to evaluate (``test``).
        batch_size: Prompts generated together (left-padded).
        limit: Evaluate only this many examples per task (a seeded random subset).
        seed: Seed of the subset choice and of torch.
        max_new_tokens: Generation budget in tokens; ``None`` uses each task's default.
        chat_template: ``auto``, ``never`` or ``always`` (see :func:`prompts.build_prompt`).
        data_dir: Data folder override.
        device: Torch device; ``None`` picks CUDA when available.
        dtype: ``fp32``/``bf16``/``fp16`` or ``None`` for the loader's default.
    """

    tasks: tuple[str, ...]
    model: str
    out_dir: str
    split: str = "test"
    batch_size: int = 8
    limit: int | None = None
    seed: int = 0
    max_new_tokens: int | None = None
    chat_template: str = "auto"
    data_dir: str | None = None
    device: str | None = None
    dtype: str | None = None


def expand_tasks(task: str) -> tuple[str, ...]:
    """``"all"`` -> every task; otherwise a one-task tuple (validated)."""
    if task == "all":
        return tuple(TASKS)
    get_task(task)
    return (task,)


def select_examples(examples: Sequence[TextExample], limit: int | None, seed: int) -> list[TextExample]:
    """All examples, or a seeded random subset of ``limit`` of them in file order."""
    if limit is None or limit >= len(examples):
        return list(examples)
    import random

    chosen = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in chosen]


def read_predictions(path: Path) -> dict[str, dict[str, Any]]:
    """Rows of a predictions file keyed by id; a torn last line (killed run) is ignored."""
    rows: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return rows
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "id" in row:
                rows[row["id"]] = row
    return rows


def _end_token_ids(tokenizer: Any) -> tuple[list[int], list[str]]:
    """EOS ids for ``generate`` and the stop strings that are not single tokens."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    strings: list[str] = []
    for text in stop_strings(tokenizer):
        tok_ids = tokenizer.convert_tokens_to_ids(text) if text in tokenizer.get_vocab() else None
        if isinstance(tok_ids, int) and tok_ids != tokenizer.unk_token_id:
            if tok_ids not in ids:
                ids.append(tok_ids)
        elif text != tokenizer.eos_token:
            strings.append(text)
    return ids, strings


def generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    add_special_tokens: bool = True,
) -> list[tuple[str, int]]:
    """Greedy answers for a batch of prompts.

    Args:
        model: A causal LM (or peft model) in eval mode.
        tokenizer: Its tokenizer (switched to left padding here).
        prompts: Prompt texts.
        max_new_tokens: Generation budget.
        add_special_tokens: Let the tokenizer add BOS (off when a chat template wrote it).

    Returns:
        ``(answer text cut at the first end marker, number of generated tokens)`` per prompt.
    """
    import torch
    from transformers import GenerationConfig

    tokenizer.padding_side = "left"
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=add_special_tokens)
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
    eos_ids, extra_stops = _end_token_ids(tokenizer)
    gen_cfg = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=eos_ids or None,
        pad_token_id=tokenizer.pad_token_id,
        stop_strings=extra_stops or None,
    )
    kwargs: dict[str, Any] = {"generation_config": gen_cfg}
    if extra_stops:
        kwargs["tokenizer"] = tokenizer
    with torch.no_grad():
        out = model.generate(**enc, **kwargs)
    new = out[:, enc["input_ids"].shape[1] :]
    stops = set(eos_ids)
    results = []
    markers = tuple(stop_strings(tokenizer)) + ((tokenizer.pad_token,) if tokenizer.pad_token else ())
    for row in new.tolist():
        n = len(row)
        for i, tok in enumerate(row):
            if tok in stops:
                n = i + 1
                break
        text = tokenizer.decode(row[:n], skip_special_tokens=False)
        results.append((cut_at_stop(text, markers), n))
    return results


def _hardware(device: str) -> dict[str, Any]:
    import torch

    info = hardware(device=device, torch_threads=torch.get_num_threads())
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_task(
    taskset: TaskSet,
    examples: Sequence[TextExample],
    model: Any,
    tokenizer: Any,
    out_dir: Path,
    *,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    chat_template: str = "auto",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Generate (resuming) and score one task.

    Returns:
        The metrics record also written to ``out_dir/metrics.json``.
    """
    spec = taskset.task
    out_dir.mkdir(parents=True, exist_ok=True)
    pred_path = out_dir / "predictions.jsonl"
    done = read_predictions(pred_path)
    budget = max_new_tokens or spec.max_new_tokens
    limit_pos = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    uses_template = chat_template == "always" or (chat_template == "auto" and has_chat_template(tokenizer))
    todo = [ex for ex in examples if ex.id not in done]
    prompts = {ex.id: build_prompt(ex, tokenizer, chat_template=chat_template) for ex in todo}
    n_tok = {k: len(tokenizer(p, add_special_tokens=not uses_template)["input_ids"]) for k, p in prompts.items()}
    # Longest first: similar lengths share a batch (less padding) and memory trouble shows early.
    todo.sort(key=lambda ex: -n_tok[ex.id])
    t_gen = 0.0
    if progress:
        progress(spec.name, len(examples) - len(todo), len(examples))
    with pred_path.open("a", encoding="utf-8") as fh:
        batch: list[TextExample] = []
        for i, ex in enumerate(todo):
            if limit_pos is not None and n_tok[ex.id] + budget > limit_pos:
                # As LLaMat does for prompts beyond the context: no answer, counted unparsable.
                row = {"id": ex.id, "index": ex.index, "output": "", "n_prompt_tokens": n_tok[ex.id],
                       "n_new_tokens": 0, "seconds": 0.0,
                       "error": f"prompt of {n_tok[ex.id]} tokens + {budget} new exceeds context {limit_pos}"}
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                done[ex.id] = row
            else:
                batch.append(ex)
            if batch and (len(batch) == batch_size or i == len(todo) - 1):
                t0 = time.perf_counter()
                try:
                    answers = generate_batch(model, tokenizer, [prompts[b.id] for b in batch],
                                             max_new_tokens=budget, add_special_tokens=not uses_template)
                    error = ""
                except (RuntimeError, ValueError) as exc:  # one bad batch must not end the run
                    answers = [("", 0)] * len(batch)
                    error = f"generation failed: {exc}"
                dt = time.perf_counter() - t0
                t_gen += dt
                for b, (text, n_new) in zip(batch, answers, strict=True):
                    row = {"id": b.id, "index": b.index, "output": text, "n_prompt_tokens": n_tok[b.id],
                           "n_new_tokens": n_new, "seconds": round(dt / len(batch), 4), "error": error}
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                    done[b.id] = row
                fh.flush()
                batch = []
            if progress:
                progress(spec.name, len(examples) - len(todo) + i + 1, len(examples))
    record = score_rows(taskset, examples, done)
    record["generation"] = {
        "seconds_this_call": round(t_gen, 2),
        "seconds_all_rows": round(sum(float(done[e.id].get("seconds", 0.0)) for e in examples), 2),
        "new_tokens_all_rows": sum(int(done[e.id].get("n_new_tokens", 0)) for e in examples),
        "max_new_tokens": budget,
        "batch_size": batch_size,
        "resumed_rows": len(examples) - len(todo),
    }
    (out_dir / "metrics.json").write_text(json.dumps(record, indent=2, default=json_default))
    return record


def score_rows(taskset: TaskSet, examples: Sequence[TextExample], rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Parse saved outputs and score them under both protocols.

    ``strict``: our tolerant parser, every annotated example in the denominator (an unparsable
    output is an empty prediction with similarity 0). ``llamat``: the numbers LLaMat's evaluation
    scripts print for the same raw outputs (:mod:`llamat_cif.text_tasks.reference`), or an
    ``error`` where those scripts would raise.

    Args:
        taskset: The task split (for the task spec and malformed-line report).
        examples: Examples to score (all must have a row).
        rows: Prediction rows keyed by example id.
    """
    spec = taskset.task
    golds, preds = [], []
    reasons: Counter[str] = Counter()
    methods: Counter[str] = Counter()
    for ex in examples:
        row = rows[ex.id]
        res = parse_prediction(spec.kind, row.get("output", ""), answer_keys(spec))
        golds.append(ex.answer)
        preds.append(res.value if res.ok else None)
        if res.ok:
            methods[res.method] += 1
        else:
            reasons[row.get("error") or res.error] += 1
    strict = score_task(spec, golds, preds)
    llamat = score_llamat(spec, golds, [rows[ex.id].get("output", "") for ex in examples])
    return {
        "task": spec.name,
        "split": taskset.split,
        "data_file": str(taskset.path),
        "n_lines_in_file": taskset.n_lines,
        "malformed_lines": [asdict(m) for m in taskset.malformed],
        "n_evaluated": len(examples),
        "n_unparsable_outputs": sum(reasons.values()),
        "unparsable_reasons": dict(reasons.most_common()),
        "parse_methods": dict(methods.most_common()),
        "strict": strict,
        "llamat": llamat,
        "protocol": (
            "strict: tolerant parsing (JSON, Python literals, code fences, prose around the answer); "
            "unparsable outputs scored as empty predictions (similarity 0). " + PROTOCOL_NOTE
            + " Doping and mof scores use only examples with a non-empty gold answer (LLaMat)."
        ),
    }


def json_default(obj: Any) -> Any:
    """``json.dumps`` fallback of the text-task records: a :class:`Rate` as its dict, else an error."""
    if isinstance(obj, Rate):
        return obj.as_dict()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def headline(record: dict[str, Any], protocol: str = "strict") -> dict[str, float | None]:
    """The task's LLaMat headline scores from a metrics record (``None`` where there is none)."""
    metrics = record[protocol]["metrics"]
    return {key: _rate_value(metrics.get(key)) for key in HEADLINE[record["task"]]}


def _rate_value(rate: Rate | dict[str, Any] | None) -> float | None:
    if rate is None:
        return None
    return rate.value if isinstance(rate, Rate) else rate["value"]


def evaluate(config: EvalConfig, *, progress: Progress | None = None) -> dict[str, Any]:
    """Load the model once and evaluate every task of ``config``.

    Returns:
        ``{"tasks": {task: metrics record}, "wall_s": ..., ...}`` (also ``summary.json``).
    """
    import torch

    from llamat_cif.model import load_generator

    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    t0 = time.perf_counter()
    model, tokenizer = load_generator(config.model, device=config.device, dtype=config.dtype)
    load_s = time.perf_counter() - t0
    device = str(next(model.parameters()).device)
    meta = {
        "config": asdict(config),
        "model_class": type(model).__name__,
        "is_peft_adapter": (Path(config.model) / "adapter_config.json").is_file(),
        "uses_chat_template": has_chat_template(tokenizer) and config.chat_template != "never",
        "end_marker": IM_END,
        "versions": package_versions(TEXT_PACKAGES, missing="not installed"),
        "hardware": _hardware(device),
    }
    (out / "config.json").write_text(json.dumps(meta, indent=2))
    results: dict[str, Any] = {}
    walls: dict[str, float] = {}
    for name in config.tasks:
        t1 = time.perf_counter()
        taskset = load_task(name, config.split, data_dir=config.data_dir)
        examples = select_examples(taskset.examples, config.limit, config.seed)
        results[name] = run_task(
            taskset, examples, model, tokenizer, out / name,
            batch_size=config.batch_size, max_new_tokens=config.max_new_tokens,
            chat_template=config.chat_template, progress=progress,
        )
        walls[name] = round(time.perf_counter() - t1, 2)
        results[name]["wall_s"] = walls[name]
    summary = {
        "model": config.model,
        "load_s": round(load_s, 2),
        "wall_s": walls,
        "headline_strict": {t: headline(r) for t, r in results.items()},
        "headline_llamat": {t: headline(r, "llamat") for t, r in results.items()},
        "llamat_errors": {t: r["llamat"]["error"] for t, r in results.items() if r["llamat"].get("error")},
        "counts": {t: {"n_evaluated": r["n_evaluated"], "n_unparsable": r["n_unparsable_outputs"],
                       **{k: v for k, v in r["strict"]["counts"].items()}} for t, r in results.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=json_default))
    return {"tasks": results, "summary": summary}


@dataclass
class TableRow:
    """One line of the metrics table."""

    task: str
    metric: str
    value: float | None
    counts: str
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def table_rows(record: dict[str, Any], *, all_metrics: bool = False) -> list[TableRow]:
    """Rows for a metrics table: headline metrics (or all) with their counts."""
    strict = record["strict"]["metrics"]
    llamat = record["llamat"]["metrics"]
    keys = list(strict) if all_metrics else list(HEADLINE[record["task"]])
    rows = []
    for key in keys:
        rate = strict[key]
        val = rate.value if isinstance(rate, Rate) else rate["value"]
        num = rate.numerator if isinstance(rate, Rate) else rate["numerator"]
        den = rate.denominator if isinstance(rate, Rate) else rate["denominator"]
        note = rate.note if isinstance(rate, Rate) else rate["note"]
        counts = f"{num:g}/{den:g}"
        rows.append(TableRow(record["task"], key, val, counts, note, {"llamat": _rate_value(llamat.get(key))}))
    return rows
