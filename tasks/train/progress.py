"""A one-line progress bar per stage on a terminal: step, loss, tokens/s and ETA, redrawn in place.

In a terminal it replaces the stage's per-step log lines on the console (flows/environment.py drops
records matching STEP_LINE there; Prefect's API and the log files still get every one). Anywhere
else (a pipe, a log file, a torchrun rank) it draws nothing. VLMPIPE_PROGRESS=0 turns it off.
"""

from __future__ import annotations

import os
import re
import sys
import time
from typing import TextIO

# the per-step log line of tasks/train/stage.py: "<stage> step 12/600 loss 1.2345 ..."
STEP_LINE = re.compile(r"^[a-z][a-z0-9_]* step \d+/\d+ loss ")


def enabled(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    return os.environ.get("VLMPIPE_PROGRESS", "1") != "0" and bool(getattr(stream, "isatty", lambda: False)())


def duration(seconds: float) -> str:
    seconds = int(round(max(0.0, seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class ProgressBar:
    """Redraws at most every `min_interval_s`; `close()` ends the line."""

    def __init__(self, name: str, total: int, start: int = 0, stream: TextIO | None = None, width: int = 24):
        self.name, self.total, self.start = name, total, start
        self.stream = stream or sys.stderr
        self.width = width
        self.active = enabled(self.stream)
        self.t0 = time.perf_counter()
        self.last_draw = 0.0
        self.drawn = False
        self.min_interval_s = 0.25

    def update(self, step: int, loss: float, tokens_per_s: float | None = None) -> None:
        if not self.active:
            return
        now = time.perf_counter()
        if now - self.last_draw < self.min_interval_s and step < self.total:
            return
        self.last_draw = now
        done = step / max(1, self.total)
        filled = int(self.width * done)
        per_step = (now - self.t0) / max(1, step - self.start)
        rate = f"  {tokens_per_s:,.0f} tok/s" if tokens_per_s else ""
        line = (
            f"\r{self.name} [{'#' * filled}{'.' * (self.width - filled)}] {step}/{self.total}"
            f"  loss {loss:.4f}{rate}  eta {duration(per_step * (self.total - step))}"
        )
        self.stream.write(line + "\x1b[K")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.active and self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False
