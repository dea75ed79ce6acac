"""Turn free model output into the task's structure, tolerantly, and say when that fails.

Models answer in JSON, in Python-dict-like text (single quotes, ``True``/``None``), inside Markdown
code fences, or with prose before and after the structure. :func:`parse_output` tries, in order:
the whole text as JSON, as a Python literal, then every balanced ``{...}``/``[...]`` span in the
text (first one that parses wins). It never raises: an output that yields nothing is returned with
``ok=False`` and a reason, and the caller counts it as unparsable.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any

# Chat end markers after which a model's answer is over. "<|im_e" is the split token LLaMat's own
# evaluation uses for LLaMat-3 chat output (it also catches a truncated "<|im_end|>").
STOP_MARKERS: tuple[str, ...] = ("<|im_e", "<|eot_id|>", "<|end_of_text|>", "</s>", "<|endoftext|>")

_FENCE = re.compile(r"```(?:json|python|py)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
# How many bracketed spans to try before giving up: outputs with prose rarely need more than one,
# and a cap keeps a pathological output from costing quadratic time.
_MAX_SPANS = 8


@dataclass(frozen=True)
class ParseResult:
    """Outcome of parsing one model output.

    Attributes:
        value: The parsed structure (``None`` when nothing parsed).
        ok: Whether a structure of the expected type was found.
        error: Why not, when ``ok`` is False.
        method: Which route succeeded (``json``, ``literal``, ``span-json``, ``span-literal``).
    """

    value: Any
    ok: bool
    error: str = ""
    method: str = ""


def cut_at_stop(text: str, markers: tuple[str, ...] = STOP_MARKERS) -> str:
    """The part of ``text`` before the first end-of-turn marker."""
    end = len(text)
    for marker in markers:
        pos = text.find(marker)
        if pos != -1:
            end = min(end, pos)
    return text[:end]


def parse_output(text: str | None, expect: type | tuple[type, ...] = (dict, list)) -> ParseResult:
    """Parse one model output into a dict or list.

    Args:
        text: Raw generated text (may be ``None`` or empty).
        expect: Accepted Python type(s) of the result.

    Returns:
        A :class:`ParseResult`; ``ok`` is False when no candidate parsed to an ``expect`` type.
    """
    if not text or not text.strip():
        return ParseResult(None, False, "empty output")
    body = cut_at_stop(text).strip()
    if not body:
        return ParseResult(None, False, "empty output before end marker")
    candidates: list[tuple[str, str]] = [("", body)]
    candidates += [("fence-", m.group(1).strip()) for m in _FENCE.finditer(body)]
    for prefix, cand in candidates:
        value, method = _load(cand)
        if method and isinstance(value, expect):
            return ParseResult(value, True, method=prefix + method)
    for n, span in enumerate(_bracket_spans(body)):
        if n >= _MAX_SPANS:
            break
        value, method = _load(span)
        if method and isinstance(value, expect):
            return ParseResult(value, True, method="span-" + method)
    return ParseResult(None, False, f"no parsable {_names(expect)} in output")


def _names(expect: type | tuple[type, ...]) -> str:
    types = expect if isinstance(expect, tuple) else (expect,)
    return "/".join(t.__name__ for t in types)


def _load(text: str) -> tuple[Any, str]:
    try:
        return json.loads(text), "json"
    except (json.JSONDecodeError, RecursionError):
        pass
    try:
        return ast.literal_eval(text), "literal"
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    # JSON's true/false/null inside otherwise Python-like text (single quotes).
    swapped = re.sub(r"\btrue\b", "True", text)
    swapped = re.sub(r"\bfalse\b", "False", swapped)
    swapped = re.sub(r"\bnull\b", "None", swapped)
    if swapped != text:
        try:
            return ast.literal_eval(swapped), "literal"
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass
    return None, ""


def _bracket_spans(text: str):
    """Yield the top-level balanced ``{...}`` / ``[...]`` substrings, left to right.

    Quotes are tracked so that brackets inside string values do not count. Only outermost spans
    are tried: the ``{}`` inside a broken answer such as ``{"b0": "x": {}}`` is a fragment, not
    the model's answer, so a span that fails to parse is skipped whole, and an opening bracket that
    never closes ends the search (everything after it is inside a truncated structure).
    """
    pairs = {"{": "}", "[": "]"}
    start = 0
    while True:
        positions = [p for p in (text.find("{", start), text.find("[", start)) if p != -1]
        if not positions:
            return
        begin = min(positions)
        end = _match(text, begin, pairs)
        if end is None:
            return
        yield text[begin : end + 1]
        start = end + 1


def _match(text: str, begin: int, pairs: dict[str, str]) -> int | None:
    stack: list[str] = []
    quote = ""
    escaped = False
    for i in range(begin, len(text)):
        ch = text[i]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
            continue
        if ch in "\"'":
            # An apostrophe inside a word ("Ce-doped MOF's") is not a Python quote.
            if ch == "'" and i > 0 and text[i - 1].isalnum() and not stack:
                continue
            quote = ch
        elif ch in pairs:
            stack.append(pairs[ch])
        elif ch in "}]":
            if not stack or stack.pop() != ch:
                return None
            if not stack:
                return i
    return None


def parse_prediction(kind: str, text: str | None, keys: tuple[str, ...] = ()) -> ParseResult:
    """Parse a model output into the structure a task's metrics expect.

    Args:
        kind: Task kind (:attr:`llamat_cif.text_tasks.tasks.TaskSpec.kind`): ``doping`` and
            ``discomat`` expect a dict, ``entities`` a list of records.
        text: Raw generated text.
        keys: The task's answer keys. When given, a dict answer must use at least one of them
            and a non-empty record list must hold at least one dict that does, so that a stray
            ``{}`` or an unrelated dict in the output is not taken for an answer.

    Returns:
        A :class:`ParseResult`. A lone dict is accepted for an entity list (wrapped in a list) and
        a one-element list holding a dict for a dict task (unwrapped): both are unambiguous.
    """
    res = parse_output(text, (dict, list))
    if not res.ok:
        return res
    value, method = res.value, res.method
    if kind == "entities":
        if isinstance(value, dict):
            value, method = [value], method + "+wrapped"
        if keys and value and not any(isinstance(r, dict) and set(r) & set(keys) for r in value):
            return ParseResult(None, False, "no record with the task's keys")
        return ParseResult(value, True, method=method)
    if isinstance(value, list):
        if len(value) == 1 and isinstance(value[0], dict):
            value, method = value[0], method + "+unwrapped"
        else:
            return ParseResult(None, False, "expected a dict, got a list")
    if keys and not set(value) & set(keys):
        return ParseResult(None, False, "dict has none of the task's keys")
    return ParseResult(value, True, method=method)
