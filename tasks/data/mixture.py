"""Seeded, resumable sampling of a stage's weighted dataset mixture.

'examples' semantics (the default) is stratified: each block of draws gives every dataset its
share rounded by carried-over remainders, shuffled within the block, so realized shares track the
spec to within a sample at every block boundary. 'batches' reproduces the original code: one
dataset chosen per draw with probability = weight, contributing `batch_size` examples.
Each dataset is walked in a fresh seeded permutation per epoch, computed index by index (a
Feistel network over the dataset's size), so the sampler's memory does not grow with the
dataset: a LAION-sized pool costs what a shapes-world pool does. Under data parallelism rank r
keeps draws r, r+W, r+2W, ... of the one global stream, so ranks never share a sample.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

BLOCK = 256  # draws per stratified block: small enough to keep local shares exact


_MASK64 = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64's finaliser: a fast, well-spread 64-bit hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


class Permutation:
    """A seeded pseudo-random permutation of range(size), evaluated one index at a time in O(1)
    memory: a 4-round balanced Feistel network on the smallest even number of bits covering `size`,
    cycle-walked back into range (fewer than 4 rounds trips on average)."""

    ROUNDS = 4

    def __init__(self, size: int, key: str):
        if size <= 0:
            raise ValueError("a permutation needs a positive size")
        self.size = size
        bits = max(2, (size - 1).bit_length())
        bits += bits % 2
        self.half = bits // 2
        self.mask = (1 << self.half) - 1
        digest = hashlib.sha256(key.encode()).digest()
        self.keys = [int.from_bytes(digest[8 * r : 8 * r + 8], "little") for r in range(self.ROUNDS)]

    def _once(self, x: int) -> int:
        left, right = x >> self.half, x & self.mask
        for k in self.keys:
            left, right = right, left ^ (_mix(right ^ k) & self.mask)
        return (left << self.half) | right

    def __getitem__(self, i: int) -> int:
        if not 0 <= i < self.size:
            raise IndexError(i)
        x = self._once(i)
        while x >= self.size:
            x = self._once(x)
        return x


@dataclass(frozen=True)
class SampleRef:
    """One drawn example: which dataset, which example, and the draw's global number (seeds the
    instruction choice, so a resumed stream renders exactly what the original would have)."""

    draw: int
    dataset: int
    example: int


class MixtureSampler:
    def __init__(
        self,
        weights: list[float],
        sizes: list[int],
        *,
        seed: int,
        semantics: str = "examples",
        batch_sizes: list[int] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        if len(weights) != len(sizes) or not weights:
            raise ValueError("weights and sizes must be non-empty and of equal length")
        if any(s <= 0 for s in sizes):
            empty = [i for i, s in enumerate(sizes) if s <= 0]
            raise ValueError(f"dataset(s) {empty} have no examples")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.sizes, self.seed, self.semantics = sizes, seed, semantics
        self.batch_sizes = batch_sizes or [1] * len(sizes)
        if semantics == "examples":
            total = float(sum(weights))
            self.shares = [w / total for w in weights]
        elif semantics == "batches":
            per_example = [w * b for w, b in zip(weights, self.batch_sizes, strict=True)]
            self.shares = [p / sum(per_example) for p in per_example]
            self._batch_probs = [w / sum(weights) for w in weights]
        else:
            raise ValueError(f"unknown mixture semantics {semantics!r}")
        self.rank, self.world_size = rank, world_size
        self._global = 0  # next global draw number
        self._b, self._off = 0, 0  # position in the block stream
        self._alloc = [0] * len(sizes)  # per-dataset draws before block _b (blocks build on it)
        self._alloc_next: list[int] = []
        self._cursor = [0] * len(sizes)  # examples taken from each dataset so far (global)
        self._perms: dict[int, tuple[int, Permutation]] = {}  # dataset -> (epoch, its permutation)
        self._block_cache: tuple[int, list[int]] | None = None

    # -- the global, rank-independent stream of dataset choices ------------------------------
    def _block(self, b: int) -> list[int]:
        """Dataset choices of block b (always the current block: blocks are built in order)."""
        if self._block_cache and self._block_cache[0] == b:
            return self._block_cache[1]
        alloc = list(self._alloc)  # examples given to each dataset before block b
        if self.semantics == "examples":
            # each draw goes to the dataset furthest behind its share, so every dataset's count
            # stays within one of share x draws; the block is then shuffled
            choices = []
            for j in range(BLOCK):
                n = b * BLOCK + j + 1
                i = max(range(len(alloc)), key=lambda k: self.shares[k] * n - alloc[k])
                alloc[i] += 1
                choices.append(i)
            random.Random(f"{self.seed}:block:{b}").shuffle(choices)
        else:
            rng = random.Random(f"{self.seed}:batches:{b}")
            choices = []
            while len(choices) < BLOCK:
                d = rng.choices(range(len(self.sizes)), weights=self._batch_probs)[0]
                choices.extend([d] * self.batch_sizes[d])
        self._block_cache = (b, choices)
        self._alloc_next = alloc
        return choices

    def _example(self, dataset: int) -> int:
        size = self.sizes[dataset]
        epoch, pos = divmod(self._cursor[dataset], size)
        held = self._perms.get(dataset)
        if held is None or held[0] != epoch:
            held = self._perms[dataset] = (epoch, Permutation(size, f"{self.seed}:perm:{dataset}:{epoch}"))
        perm = held[1]
        self._cursor[dataset] += 1
        return perm[pos]

    def __iter__(self):
        return self

    def __next__(self) -> SampleRef:
        while True:
            block = self._block(self._b)
            dataset, draw = block[self._off], self._global
            self._off += 1
            if self._off == len(block):
                self._b, self._off, self._alloc = self._b + 1, 0, self._alloc_next
            self._global += 1
            # every rank advances every cursor, so each rank's view of the stream stays identical
            example = self._example(dataset)
            if draw % self.world_size == self.rank:
                return SampleRef(draw, dataset, example)

    def take(self, n: int) -> list[SampleRef]:
        return [next(self) for _ in range(n)]

    # -- resume ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "global": self._global,
            "block": self._b,
            "offset": self._off,
            "alloc": list(self._alloc),
            "cursor": list(self._cursor),
            "seed": self.seed,
            "shares": list(self.shares),
            "sizes": list(self.sizes),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["sizes"] != list(self.sizes) or state["seed"] != self.seed:
            raise ValueError("iterator state belongs to a different mixture (sizes or seed differ)")
        self._global = int(state["global"])
        self._b, self._off = int(state["block"]), int(state["offset"])
        self._alloc = [int(a) for a in state["alloc"]]
        self._block_cache = None
        self._cursor = [int(c) for c in state["cursor"]]
