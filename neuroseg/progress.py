"""Progress of long steps as plain log lines (light; no TensorFlow, no Prefect).

``segment 12/40 images (30%), 3.1 s/image, about 1 min left`` reads the same in a terminal, in
a log file and in the Prefect UI's logs, where carriage-return progress bars turn into noise.
A :class:`Progress` emits a line when the done fraction crosses the next step (every 10 % by
default), when some time has passed since the last line (30 s), and always for the last item,
so a 40-image plate gives about ten lines and a 100,000-image night no more.

Lines go to ``emit`` (e.g. a Prefect run logger's ``info``) or, by default, to the
``neuroseg.progress`` logger, which the command line shows on stderr.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

__all__ = ["Progress", "format_duration"]

_LOG = logging.getLogger("neuroseg.progress")
T = TypeVar("T")


def format_duration(seconds: float) -> str:
    """``"42 s"``, ``"3 min"``, ``"1 h 05 min"``."""
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min"


class Progress:
    """Counts finished items and logs a plain line now and then.

    Parameters
    ----------
    what : str
        The step, first word of each line (``"segment"``, ``"train"``).
    total : int
        Items expected.
    unit : str
        Plural unit (``"images"``, ``"tiles"``, ``"epochs"``); the rate uses it without a
        trailing ``s``.
    emit : callable, optional
        Receives each line; default: ``logging.getLogger("neuroseg.progress").info``.
    done : int
        Items already finished before this counter started (e.g. phases of a resumed run);
        they count in the total but not in the rate.
    every_percent : float
        Emit when the done fraction crosses a multiple of this.
    every_seconds : float
        Emit when this long has passed since the last line.
    clock : callable
        Seconds (monotonic); for tests.
    """

    def __init__(
        self,
        what: str,
        total: int,
        *,
        unit: str = "items",
        emit: Callable[[str], object] | None = None,
        done: int = 0,
        every_percent: float = 10.0,
        every_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if total < 0 or done < 0:
            raise ValueError(f"total and done must be >= 0, got {total} and {done}")
        if not every_percent > 0:
            raise ValueError(f"every_percent must be > 0, got {every_percent}")
        self.what, self.total, self.unit = what, int(total), unit
        self.done = self._start = int(done)
        self._emit = emit or _LOG.info
        self._every_percent = float(every_percent)
        self._every_seconds = float(every_seconds)
        self._clock = clock
        self._t0 = self._last = clock()
        self._step = self._bucket(self.done)

    def _bucket(self, done: int) -> int:
        if self.total <= 0:
            return 0
        return math.floor(100.0 * done / self.total / self._every_percent + 1e-9)

    @property
    def per_item(self) -> float | None:
        """Seconds per item counted since the start, None before the first."""
        counted = self.done - self._start
        return (self._clock() - self._t0) / counted if counted > 0 else None

    def line(self, note: str = "") -> str:
        """The current progress line (without emitting it)."""
        pct = 100.0 * self.done / self.total if self.total else 100.0
        text = f"{self.what} {self.done}/{self.total} {self.unit} ({pct:.0f}%)"
        per = self.per_item
        if per is not None:
            one = self.unit[:-1] if self.unit.endswith("s") else self.unit
            if per >= 0.1:
                text += f", {per:.1f} s/{one}"
            else:
                text += f", {1.0 / max(per, 1e-9):.0f} {self.unit}/s"
            left = self.total - self.done
            if left > 0:
                text += f", about {format_duration(left * per)} left"
        return f"{text}; {note}" if note else text

    def track(self, items: Iterable[T]) -> Iterator[T]:
        """Yield `items`, counting each one as done when the next is asked for."""
        for item in items:
            yield item
            self.update()

    def update(self, n: int = 1, *, note: str = "") -> bool:
        """Count `n` finished items; emit a line if one is due. Returns whether it emitted."""
        self.done += int(n)
        now = self._clock()
        bucket = self._bucket(self.done)
        due = (
            self.done >= self.total
            or bucket > self._step
            or now - self._last >= self._every_seconds
        )
        if not due:
            return False
        self._step, self._last = bucket, now
        self._emit(self.line(note))
        return True
