"""A holder of the latest immutable value, written by one actor and read by HTTP.

This is the only state shared between tasks: the writer replaces the value wholesale, so a
reader always sees a consistent record without locks.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Latest(Generic[T]):
    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def set(self, value: T) -> None:
        self.value = value
