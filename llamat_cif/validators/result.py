"""The value every check returns: a verdict, the reason for it, and the numbers behind it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one validity check.

    Attributes:
        ok: ``True`` (passes), ``False`` (fails) or ``None`` (the check does not apply, e.g. no
            target was requested, or the text states nothing to compare against).
        reason: why; always filled, so a row can be read without re-running the check.
        details: the quantities the verdict was computed from (distances, counts, symbols).
    """

    ok: bool | None
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.ok)

    @property
    def applicable(self) -> bool:
        return self.ok is not None
