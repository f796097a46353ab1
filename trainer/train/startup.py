"""How long a run took from its command to its first training step, and where that time went.

Parts, in order: launch (Python, imports, config: since the process started), model build,
index (walking the folder and splitting), then either cache build (the cached pipeline's pixel
cache, whose one decode per image is also the bad-file check) or check (the other pipelines:
decoding every image for the bad-file check; verdicts cached make it ~0), run folder (claiming
output_dir, a checkpoint loaded on resume), other setup, phase start (freezing, optimizer, the
feature cache of a frozen phase) and first batch (loader start, the first forward, backward and
update). The images decoded on the way are counted: a second run on the same files decodes none. Printed once and kept in summary.json; not in metrics.jsonl, whose events hold the
numbers one seed repeats exactly.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def seconds_since_process_start() -> float:
    """How long this process has run (Linux /proc, 10 ms resolution); 0.0 where unknown."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime, in ticks
        return max(0.0, float(Path("/proc/uptime").read_text().split()[0]) - started)
    except (OSError, ValueError, IndexError):
        return 0.0


@dataclass
class Startup:
    """Seconds per part of the way to the first training step, on this process."""

    parts: dict[str, float] = field(
        default_factory=lambda: {"launch": seconds_since_process_start()}
    )
    last: float = field(default_factory=time.perf_counter)
    total: float | None = None  # set by the first step
    decoded: int = 0  # image files decoded on the way (check and pixel cache): 0 when cached

    def lap(self, part: str, **inside: float) -> None:
        """Book the time since the last lap to `part`, less the `inside` seconds measured by
        the work itself and booked to their own parts (e.g. the scan's check). After the first
        step nothing is booked."""
        if self.total is not None:
            return
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        own = max(0.0, elapsed - sum(inside.values()))
        for name, seconds in {part: own, **inside}.items():
            self.parts[name] = self.parts.get(name, 0.0) + seconds

    def step_done(self, accelerator: Any) -> None:
        """After each optimizer update: the first one ends the startup (printed)."""
        if self.total is not None:
            return
        self.lap("first batch")
        self.total = sum(self.parts.values())
        accelerator.print(self.line())

    def line(self) -> str:
        """'time to first step 32.1s (20000 images decoded here): launch 3.2s, index 0.1s, ...'."""
        parts = ", ".join(f"{k} {v:.1f}s" for k, v in self.parts.items())
        return f"time to first step {self.total:.1f}s ({self.decoded} images decoded here): {parts}"

    def summary(self) -> dict[str, Any] | None:
        """summary.json's time_to_first_step: total and parts in seconds (None: no step ran)."""
        if self.total is None:
            return None
        return {"seconds": round(self.total, 3), **{k: round(v, 3) for k, v in self.parts.items()}}
