"""What sources and sinks share: the step they belong to and the flow's base directory."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, TypeVar

from nodes.errors import FlowError, StepRef

E = TypeVar("E", bound="Endpoint")


class Endpoint:
    """Base of sources and sinks: bound to a step (for messages) and a base directory."""

    kind = "endpoint"
    family = "nodes"
    """The module users call it from ("sources", "sinks"), for messages."""

    def __init__(self) -> None:
        self.step: StepRef | None = None
        self.base_dir: Path | None = None

    def bind(self: E, step: StepRef, base_dir: str | os.PathLike) -> E:
        """A copy that knows its step (for messages) and the flow's base directory."""
        bound = copy.copy(self)
        bound.step, bound.base_dir = step, Path(base_dir)
        return bound

    def describe(self) -> dict[str, Any]:
        """A msgpack-able description, for status output."""
        return {"kind": self.kind}

    def _label(self) -> str:
        return self.step.label if self.step else f"{self.family}.{self.kind}()"

    def _error(self, message: str) -> FlowError:
        if self.step:
            return self.step.error(message)
        return FlowError(f"{self._label()}: {message}")
