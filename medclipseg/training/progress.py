"""Progress reports and cancellation of long library calls (training, scoring); torch-free.

The app and the job runner import these without paying for torch. The clock is cheap: one
``time.perf_counter`` per report, and the estimate is the mean time per unit of work so far.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Optional

__all__ = ["TrainProgress", "ScoringProgress", "TrainingCancelled", "ProgressClock"]


class TrainingCancelled(RuntimeError):
    """``should_stop()`` answered True: the call stopped and left no half-written result."""


@dataclass(frozen=True)
class TrainProgress:
    """After one optimiser step. ``step`` counts from 1 to ``total_steps`` over all epochs."""

    step: int
    total_steps: int
    epoch: int          # 1-based epoch the step belongs to
    epochs: int
    loss: float         # the step's loss
    elapsed_seconds: float
    eta_seconds: Optional[float]  # None until a step has been timed

    @property
    def fraction(self) -> float:
        return self.step / self.total_steps if self.total_steps else 1.0

    def to_dict(self) -> dict:
        return {**asdict(self), "fraction": self.fraction}


@dataclass(frozen=True)
class ScoringProgress:
    """After one scored case (``case`` counts from 1 to ``total_cases``)."""

    case: int
    total_cases: int
    elapsed_seconds: float
    eta_seconds: Optional[float]

    @property
    def fraction(self) -> float:
        return self.case / self.total_cases if self.total_cases else 1.0


class ProgressClock:
    """Elapsed time and remaining-time estimate for ``total`` units of work.

    ``already_done`` units (a resumed run) count towards the total but not towards the rate, so
    the estimate uses only work timed by this clock.
    """

    def __init__(self, total: int, already_done: int = 0):
        self.total = int(total)
        self.already_done = int(already_done)
        self.started = time.perf_counter()

    def times(self, done: int) -> tuple:
        """(elapsed_seconds, eta_seconds or None) once ``done`` units of ``total`` are finished."""
        elapsed = time.perf_counter() - self.started
        timed = done - self.already_done
        if timed <= 0:
            return elapsed, None
        return elapsed, max(0.0, elapsed / timed * (self.total - done))
