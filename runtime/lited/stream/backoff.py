"""Capped exponential delays between attempts (reopening a source, restarting an engine)."""
from __future__ import annotations


class Backoff:
    """Capped exponential delay between reopen attempts."""

    def __init__(self, first: float = 0.5, cap: float = 30.0) -> None:
        self.first, self.cap = first, cap
        self.delay = first

    def next(self) -> float:
        delay = self.delay
        self.delay = min(self.cap, self.delay * 2)
        return delay

    def reset(self) -> None:
        self.delay = self.first
