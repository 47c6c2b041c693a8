"""One place that turns step timings into the figures every step reports: tokens/s, samples/s,
data-wait share, peak memory and MFU (model FLOPs utilisation: 6 x every parameter but the
token embeddings, frozen towers included, x text tokens, over the device's peak; attention FLOPs
are left out. Reported only when the peak is known: set VLMPIPE_PEAK_TFLOPS on CPUs).
"""

from __future__ import annotations

import os
import resource
import sys
import time
from dataclasses import dataclass, field

import torch

# dense bf16 peaks, TFLOP/s, for MFU on known accelerators
_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "RTX 3090": 71.0, "A10": 125.0, "L4": 121.0}


def peak_flops() -> float | None:
    if os.environ.get("VLMPIPE_PEAK_TFLOPS"):
        return float(os.environ["VLMPIPE_PEAK_TFLOPS"]) * 1e12
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, tflops in _PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12
    return None


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


@dataclass
class Throughput:
    """Accumulates a window of steps; `report()` returns its figures and starts a new window."""

    flops_per_token: float = 0.0  # see flops_per_token(): 6 x parameters, a rough upper estimate
    _tokens: int = 0
    _samples: int = 0
    _data_s: float = 0.0
    _compute_s: float = 0.0
    _t0: float = field(default_factory=time.perf_counter)

    def add(self, *, tokens: int, samples: int, data_s: float, compute_s: float) -> None:
        self._tokens += tokens
        self._samples += samples
        self._data_s += data_s
        self._compute_s += compute_s

    def report(self) -> dict[str, float]:
        wall = max(time.perf_counter() - self._t0, 1e-9)
        busy = max(self._data_s + self._compute_s, 1e-9)
        out = {
            "tokens_per_s": self._tokens / wall,
            "samples_per_s": self._samples / wall,
            "data_wait_share": self._data_s / busy,
            "peak_memory_mb": peak_memory_mb(),
        }
        peak = peak_flops()
        if peak and self.flops_per_token:
            out["mfu"] = self.flops_per_token * self._tokens / wall / peak
        self._tokens = self._samples = 0
        self._data_s = self._compute_s = 0.0
        self._t0 = time.perf_counter()
        return out


def flops_per_token(model: torch.nn.Module) -> float:
    """6N, N = every parameter but the token-embedding table. A coarse estimate: it counts the frozen
    towers as if they ran forward and backward once per text token (they run forward once per
    image) and leaves out attention's own FLOPs."""
    n = sum(p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name)
    return 6.0 * n
