"""The model's enumerations by the names the API gives them: the one place that reads a state,
a mode or a kind from a request, and says which names are allowed when one is not."""

from __future__ import annotations

import enum
from typing import TypeVar

from warren import model
from warren.text import shown


class ConversionError(ValueError):
    """A request field holds a value the model has no name for."""


_Enum = TypeVar("_Enum", bound=enum.Enum)


def enum_member(enum_type: type[_Enum], value: str, field: str) -> _Enum:
    """The member of `enum_type` named by `value`; ConversionError, saying which are, if none is."""
    try:
        return enum_type(value)
    except ValueError:
        allowed = ", ".join(e.value for e in enum_type)
        raise ConversionError(f"{field} must be one of {allowed} (got {shown(value)})") from None


def task_state(name: str) -> model.TaskState:
    try:
        return model.TaskState[name.upper()]
    except KeyError:
        allowed = ", ".join(s.label for s in model.TaskState)
        raise ConversionError(f"unknown task state {shown(name)} (one of {allowed})") from None


def task_state_or(name: str, default: model.TaskState) -> model.TaskState:
    """The state `name` names, or `default` when it is empty or unknown."""
    try:
        return task_state(name) if name else default
    except ConversionError:
        return default
