"""One place that turns step timings into the figures every step reports: tokens/s, samples/s,
data-wait share, peak memory and MFU (model FLOPs utilisation: the step's FLOPs counted by component
in tasks/train/flops.py, over the device's peak; reported only when the peak is known: set
VLMPIPE_PEAK_TFLOPS on CPUs and on GPUs missing from flops.PEAK_TFLOPS).
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field

import torch


def peak_memory_mb(device: torch.device | None = None) -> float:
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


@dataclass
class Throughput:
    """Accumulates a window of steps; `report()` returns its figures and starts a new window."""

    peak_flops: float | None = None  # of all processes together; None: no MFU
    device: torch.device | None = None
    _tokens: int = 0
    _samples: int = 0
    _flops: float = 0.0
    _data_s: float = 0.0
    _compute_s: float = 0.0
    _t0: float = field(default_factory=time.perf_counter)

    def add(self, *, tokens: int, samples: int, data_s: float, compute_s: float, flops: float = 0.0) -> None:
        self._tokens += tokens
        self._samples += samples
        self._flops += flops
        self._data_s += data_s
        self._compute_s += compute_s

    def report(self) -> dict[str, float]:
        wall = max(time.perf_counter() - self._t0, 1e-9)
        busy = max(self._data_s + self._compute_s, 1e-9)
        out = {
            "tokens_per_s": self._tokens / wall,
            "samples_per_s": self._samples / wall,
            "data_wait_share": self._data_s / busy,
            "peak_memory_mb": peak_memory_mb(self.device),
        }
        if self.peak_flops and self._flops:
            out["tflops_per_s"] = self._flops / wall / 1e12
            out["mfu"] = self._flops / wall / self.peak_flops
        self._tokens = self._samples = 0
        self._flops = self._data_s = self._compute_s = 0.0
        self._t0 = time.perf_counter()
        return out
