"""The LLaMat structured-information-extraction (SIE) sets: what each task is and how to load it.

Each set is a JSON-lines file under ``<data>/text/`` with one object a line holding ``system`` (the
instruction), ``question`` (the passage plus the request) and ``answer`` (the gold structure). The
answer is stored as a JSON string in some files and as an object in others; loading turns every
answer into its structure and checks its shape, so metrics never see a malformed gold record:

- ``doping``: ``{"basemats": {id: text}, "dopants": {id: text}, "dopants2basemats": {dopant id:
  [basemat id, ...]}}`` (Cruse et al. 2022 / Dunn et al. 2022 annotation scheme);
- ``mof1`` (general materials) and ``mof2`` (metal-organic frameworks): a list of entity records,
  each a dict with the task's keys (Dunn et al. 2022);
- ``discomat``: a dict of integer lists ``comp_table``, ``regex_table`` and optional row/column
  indices (Gupta et al. 2022, DiSCoMaT).

Malformed lines are reported (line number and reason), never silently dropped and never fatal.
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamat_cif.paths import data_dir

TEXT_SUBDIR = "text"


@dataclass(frozen=True)
class TaskSpec:
    """One SIE task: its files and the shape of its answers.

    Attributes:
        name: Task name used on the command line.
        files: Split name -> file name under ``<data>/text/``.
        kind: Answer shape: ``"doping"``, ``"entities"`` (list of records) or ``"discomat"``.
        description: One line for tables and help texts.
        entity_keys: For ``"entities"`` tasks, the keys each record carries (LLaMat's
            ``ENTS_FROZEN``).
        root_key: For ``"entities"`` tasks, the key other entities link to.
        string_keys: Keys whose value is a single string (the rest are lists of strings).
        max_new_tokens: Default generation budget (tokens) for this task's answers.
    """

    name: str
    files: dict[str, str]
    kind: str
    description: str
    entity_keys: tuple[str, ...] = ()
    root_key: str = ""
    string_keys: tuple[str, ...] = ()
    max_new_tokens: int = 256


TASKS: dict[str, TaskSpec] = {
    "doping": TaskSpec(
        name="doping",
        files={"train": "doping_train.jsonl", "test": "doping_test.jsonl"},
        kind="doping",
        description="base materials, dopants and dopant->base links from one sentence",
        max_new_tokens=256,
    ),
    "mof1": TaskSpec(
        name="mof1",
        files={"train": "mof1_train.jsonl", "test": "mof1_test.jsonl"},
        kind="entities",
        description="general materials entities (name, formula, acronym, ...) from an abstract",
        entity_keys=("acronym", "applications", "name", "formula", "structure_or_phase", "description"),
        root_key="formula",
        string_keys=("name", "formula", "acronym"),
        max_new_tokens=768,
    ),
    "mof2": TaskSpec(
        name="mof2",
        files={"train": "mof2_train.jsonl", "test": "mof2_test.jsonl"},
        kind="entities",
        description="metal-organic framework entities from an abstract",
        entity_keys=("name_of_mof", "mof_formula", "mof_description", "guest_species", "applications"),
        root_key="name_of_mof",
        string_keys=("name_of_mof", "mof_formula"),
        max_new_tokens=768,
    ),
    "discomat": TaskSpec(
        name="discomat",
        files={"test": "discomat_test_valfile.jsonl"},
        kind="discomat",
        description="composition tables: table type, composition/chemical/material-id rows and columns",
        max_new_tokens=256,
    ),
}

DOPING_KEYS = ("basemats", "dopants", "dopants2basemats")
DISCOMAT_INDEX_KEYS = (
    "composition_row_index",
    "composition_col_index",
    "chemical_row_index",
    "chemical_col_index",
    "gid_row_index",
    "gid_col_index",
)


class TaskError(ValueError):
    """A task or split that does not exist, or a task file that cannot be read."""


@dataclass(frozen=True)
class TextExample:
    """One validated SIE example.

    Attributes:
        task: Task name.
        split: Split name.
        index: 0-based line index in the file (stable id across runs).
        system: System / instruction text.
        question: Passage plus request.
        answer: Gold structure (dict or list, see the module docstring).
    """

    task: str
    split: str
    index: int
    system: str
    question: str
    answer: Any

    @property
    def id(self) -> str:
        """Stable id, e.g. ``doping-test-0042``."""
        return f"{self.task}-{self.split}-{self.index:04d}"


@dataclass(frozen=True)
class MalformedRecord:
    """A line that could not be turned into a :class:`TextExample`."""

    line: int
    reason: str


@dataclass
class TaskSet:
    """The valid examples of one task split plus the lines that were rejected."""

    task: TaskSpec
    split: str
    path: Path
    examples: list[TextExample] = field(default_factory=list)
    malformed: list[MalformedRecord] = field(default_factory=list)

    @property
    def n_lines(self) -> int:
        """Number of non-blank lines read (valid + malformed)."""
        return len(self.examples) + len(self.malformed)


def get_task(name: str) -> TaskSpec:
    """Look a task up by name.

    Raises:
        TaskError: Unknown task, with the known names in the message.
    """
    try:
        return TASKS[name]
    except KeyError:
        raise TaskError(f"unknown text task {name!r}; known: {', '.join(TASKS)}") from None


def task_path(name: str, split: str, data_dir_override: str | os.PathLike | None = None) -> Path:
    """File of one task split under the project's data folder (``$LLAMAT_CIF_DATA/text/``)."""
    spec = get_task(name)
    if split not in spec.files:
        raise TaskError(f"task {name!r} has no {split!r} split; available: {', '.join(spec.files)}")
    return data_dir(data_dir_override) / TEXT_SUBDIR / spec.files[split]


def load_task(
    name: str,
    split: str = "test",
    *,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
) -> TaskSet:
    """Read and validate one task split.

    Args:
        name: Task name (``doping``, ``mof1``, ``mof2``, ``discomat``).
        split: ``train`` or ``test`` (discomat has only ``test``).
        data_dir: Data folder override (default ``$LLAMAT_CIF_DATA``).
        limit: Keep only the first ``limit`` valid examples.

    Returns:
        The valid examples and the malformed lines with reasons.

    Raises:
        TaskError: Unknown task/split, or the file does not exist.
    """
    spec = get_task(name)
    path = task_path(name, split, data_dir)
    if not path.is_file():
        raise TaskError(
            f"{path} not found: set $LLAMAT_CIF_DATA (or --data-dir) to a folder holding "
            f"text/{spec.files[split]} (the LLaMat SIE sets)"
        )
    out = TaskSet(task=spec, split=split, path=path)
    for line_no, raw in _iter_lines(path):
        try:
            out.examples.append(parse_record(spec, split, line_no - 1, raw))
        except ValueError as exc:
            out.malformed.append(MalformedRecord(line=line_no, reason=str(exc)))
        if limit is not None and len(out.examples) >= limit:
            break
    return out


def _iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open(encoding="utf-8") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if raw.strip():
                yield line_no, raw


def parse_record(spec: TaskSpec, split: str, index: int, raw: str) -> TextExample:
    """Turn one JSON line into a validated example.

    Raises:
        ValueError: The line is not a JSON object with string ``system``/``question`` and an
            ``answer`` of the task's shape; the message says what is wrong.
    """
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    for key in ("system", "question"):
        if not isinstance(obj.get(key), str):
            raise ValueError(f"missing or non-string {key!r}")
    if "answer" not in obj:
        raise ValueError("missing 'answer'")
    answer = obj["answer"]
    if isinstance(answer, str):
        answer = _decode_answer_string(answer)
    validate_answer(spec, answer)
    return TextExample(
        task=spec.name,
        split=split,
        index=index,
        system=obj["system"],
        question=obj["question"],
        answer=answer,
    )


def _decode_answer_string(text: str) -> Any:
    # The released files store most answers as JSON strings; a few LLaMat-era files used Python
    # reprs, hence the literal_eval fallback.
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        try:
            return ast.literal_eval(text.strip())
        except (ValueError, SyntaxError) as exc:
            raise ValueError(f"answer string is neither JSON nor a Python literal: {exc}") from None


def validate_answer(spec: TaskSpec, answer: Any) -> None:
    """Check that a gold answer has the task's shape.

    Raises:
        ValueError: With the first problem found.
    """
    if spec.kind == "doping":
        if not isinstance(answer, dict):
            raise ValueError("doping answer must be a dict")
        for key in DOPING_KEYS:
            if not isinstance(answer.get(key), dict):
                raise ValueError(f"doping answer lacks dict {key!r}")
        for key in ("basemats", "dopants"):
            if not all(isinstance(v, str) for v in answer[key].values()):
                raise ValueError(f"doping {key!r} values must be strings")
        for did, bids in answer["dopants2basemats"].items():
            if not isinstance(bids, list):
                raise ValueError(f"dopants2basemats[{did!r}] must be a list")
    elif spec.kind == "entities":
        if not isinstance(answer, list):
            raise ValueError(f"{spec.name} answer must be a list of records")
        for i, rec in enumerate(answer):
            if not isinstance(rec, dict):
                raise ValueError(f"{spec.name} record {i} is not a dict")
            for key, val in rec.items():
                if not isinstance(val, str | list):
                    raise ValueError(f"{spec.name} record {i} key {key!r} is {type(val).__name__}")
    elif spec.kind == "discomat":
        if not isinstance(answer, dict):
            raise ValueError("discomat answer must be a dict")
        for key in ("comp_table", "regex_table"):
            val = answer.get(key)
            if not (isinstance(val, list) and len(val) == 1 and val[0] in (0, 1)):
                raise ValueError(f"discomat {key!r} must be [0] or [1]")
        for key in DISCOMAT_INDEX_KEYS:
            if key in answer and not (
                isinstance(answer[key], list) and all(isinstance(i, int) for i in answer[key])
            ):
                raise ValueError(f"discomat {key!r} must be a list of ints")
    else:  # pragma: no cover - TASKS is closed
        raise ValueError(f"unknown task kind {spec.kind!r}")


def answer_keys(spec: TaskSpec) -> tuple[str, ...]:
    """Keys a task's answers use (a parsed prediction must use at least one of them)."""
    if spec.kind == "doping":
        return DOPING_KEYS
    if spec.kind == "discomat":
        return ("comp_table", "regex_table", *DISCOMAT_INDEX_KEYS)
    return spec.entity_keys


def is_empty_answer(spec: TaskSpec, answer: Any) -> bool:
    """True for gold answers with nothing annotated (LLaMat leaves these out of the SIE scores).

    Doping: all three dicts empty. mof1/mof2: an empty list. Discomat answers are never empty.
    """
    if spec.kind == "doping":
        return all(not answer.get(k) for k in DOPING_KEYS)
    if spec.kind == "entities":
        return answer == []
    return False
