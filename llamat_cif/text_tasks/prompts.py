"""Chat prompts for the SIE tasks and the answer text a finetuned model should produce.

A tokenizer that carries a chat template (LLaMA-3-Instruct, LLaMat-3-chat, ...) gets its own
template with a system and a user turn. Without one, the plain layout is LLaMat-Chat's own
(``evaluation_codes/*_run.py``)::

    <|im_start|>system
    {system}<|im_end|>
    <|im_start|>question
    {question}<|im_end|>
    <|im_start|>answer
    {answer}<|im_end|>

so a LLaMat checkpoint saved without a template still sees the layout it was trained on.
"""

from __future__ import annotations

import json
from typing import Any

from llamat_cif.text_tasks.tasks import TextExample

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
#: Special tokens a from-scratch text tokenizer needs for the plain layout.
PLAIN_SPECIAL_TOKENS = (IM_START, IM_END)


def has_chat_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def plain_prompt(system: str, question: str) -> str:
    """The LLaMat-Chat layout up to and including the ``answer`` header."""
    return (
        f"{IM_START}system\n{system}{IM_END}\n"
        f"{IM_START}question\n{question}{IM_END}\n"
        f"{IM_START}answer\n"
    )


def build_prompt(example: TextExample, tokenizer: Any = None, *, chat_template: str = "auto") -> str:
    """Prompt text for one example.

    Args:
        example: The example.
        tokenizer: The model's tokenizer (consulted for a chat template).
        chat_template: ``"auto"`` (use the tokenizer's template when it has one), ``"never"``
            (always the plain LLaMat layout) or ``"always"`` (error without a template).

    Raises:
        ValueError: ``chat_template="always"`` and the tokenizer has no template.
    """
    use_template = chat_template == "always" or (
        chat_template == "auto" and tokenizer is not None and has_chat_template(tokenizer)
    )
    if not use_template:
        return plain_prompt(example.system, example.question)
    if tokenizer is None or not has_chat_template(tokenizer):
        raise ValueError("chat_template='always' but the tokenizer has no chat template")
    messages = [
        {"role": "system", "content": example.system},
        {"role": "user", "content": example.question},
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def answer_text(answer: Any) -> str:
    """Canonical answer text: compact JSON, non-ASCII kept.

    One canonical form (rather than the mix of indented JSON strings and objects in the released
    files) gives a small model a single target format and short targets to learn.
    """
    return json.dumps(answer, ensure_ascii=False)


def completion_text(example: TextExample, tokenizer: Any = None, *, chat_template: str = "auto") -> str:
    """The target a finetuned model should generate after :func:`build_prompt`.

    The plain layout closes the turn with ``<|im_end|>``; with a chat template the tokenizer's end
    of sequence closes it.
    """
    uses_template = chat_template == "always" or (
        chat_template == "auto" and tokenizer is not None and has_chat_template(tokenizer)
    )
    end = (getattr(tokenizer, "eos_token", None) or "") if uses_template else IM_END
    return answer_text(example.answer) + end


def stop_strings(tokenizer: Any = None) -> list[str]:
    """Strings that end an answer: ``<|im_end|>`` and the tokenizer's EOS text."""
    out = [IM_END]
    eos = getattr(tokenizer, "eos_token", None)
    if eos and eos not in out:
        out.append(eos)
    return out
