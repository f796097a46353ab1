"""How long work shows its progress: a bar in a terminal, plain lines in a log.

Under Slurm (or `> log.txt`) stderr is not a terminal, and tqdm's carriage returns and half-drawn
bars turn a slurm-*.out into noise. There each piece of long work writes one plain line every
TRAINER_PROGRESS_SECONDS (default 30) seconds instead:
`train epoch 3: 1200/4800 batches, 4.1 batches/s, eta 14m38s, loss=0.4120, lr=1.00e-03`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

DEFAULT_SECONDS = 30.0


def bar(
    iterable: Iterable | None,
    desc: str,
    *,
    total: int | None = None,
    initial: int = 0,
    unit: str = "batches",
    disable: bool = False,
) -> tqdm | LogLines:
    """A tqdm bar when stderr is a terminal, else LogLines; both are iterated, update()d,
    set_postfix()ed and closed (or used as a context manager) the same way."""
    if sys.stderr.isatty():
        return tqdm(
            iterable,
            desc=desc,
            total=total,
            initial=initial,
            unit=unit,
            leave=False,
            disable=disable,
            mininterval=0.1,
            dynamic_ncols=True,
        )
    return LogLines(iterable, desc, total=total, initial=initial, unit=unit, disable=disable)


def interval() -> float:
    """Seconds between two progress lines in a log (TRAINER_PROGRESS_SECONDS)."""
    try:
        return max(0.0, float(os.environ.get("TRAINER_PROGRESS_SECONDS", DEFAULT_SECONDS)))
    except ValueError:
        return DEFAULT_SECONDS


def _duration(seconds: float) -> str:
    """7s, 2m10s, 3h05m."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class LogLines:
    """Progress for logs: a line every interval() seconds (none for work shorter than that),
    no bar and no carriage return."""

    def __init__(
        self,
        iterable: Iterable | None,
        desc: str,
        *,
        total: int | None = None,
        initial: int = 0,
        unit: str = "batches",
        disable: bool = False,
    ):
        self.iterable, self.desc, self.unit, self.disable = iterable, desc, unit, disable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.start_n = total, initial, initial
        self.every = interval()
        self.start = self.last = time.monotonic()
        self.postfix: dict[str, Any] = {}

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if not self.disable and now - self.last >= self.every:
            self.last = now
            print(self.line(now), file=sys.stderr, flush=True)

    def line(self, now: float) -> str:
        """'DESC: n/total UNIT, R UNIT/s, eta T, key=value, ...'."""
        rate = (self.n - self.start_n) / max(now - self.start, 1e-9)
        parts = [
            f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "") + f" {self.unit}"
        ]
        parts.append(f"{rate:.3g} {self.unit}/s")
        if self.total and rate > 0:
            parts.append(f"eta {_duration((self.total - self.n) / rate)}")
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        return ", ".join(parts)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def close(self) -> None:
        pass  # nothing drawn to clear

    def __enter__(self) -> LogLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
