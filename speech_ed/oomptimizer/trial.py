"""What every memory probe offers: ``trial(batch_size, max_duration_s, max_tokens) -> TrialResult``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

GiB = 1 << 30


@dataclass
class TrialResult:
    """One trial of a probe."""

    batch_size: int
    fits: bool
    peak_bytes: Optional[int]
    """Peak memory of the step (None when the step was stopped by running out of memory)."""
    seconds: float
    note: str = ""


class Probe:
    """Common interface; see the module docstring."""

    name = "probe"

    def __init__(self, limit_bytes: int, device_name: str):
        self.limit_bytes = int(limit_bytes)
        self.device_name = device_name

    def trial(self, batch_size: int, max_duration_s: float, max_tokens: int) -> TrialResult:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"probe": self.name, "device": self.device_name, "limit_gib": round(self.limit_bytes / GiB, 4)}
