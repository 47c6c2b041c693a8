"""A stage's training data: example pools per mixture dataset, the seeded mixture stream, rendering
through the template registry, encoding and packing into batches, and the loader that brings each
batch's images (pixels, or cached frozen features) from worker processes.

Memory stays bounded whatever a source's size: an ingested source is read through its on-disk,
memory-mapped index (tasks/data/records.py), an example is rendered from its record when it is
drawn, and preprocessed images live in a least-recently-used cache of fixed size. Only datasets
read from annotation files (`format:`) hold their examples as a list; those files are the
instruction sets of stages 3-4, not web-scale pairs.

The token side of every batch (mixture position, rendering, tokenising, packing) is computed in
the training process, in order, so it is exact and resumable: the whole iterator state is a small
dict saved in every checkpoint. Only the images, a pure function of the batch, are loaded by
DataLoader workers ahead of the step.
"""

from __future__ import annotations

import hashlib
import os
import random
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_specs.stages import MixtureDataset, StageSpec
from model.tokenizer import pad_token_id
from tasks.data.examples import TaskExample, Turn
from tasks.data.mixture import MixtureSampler, SampleRef
from tasks.data.packing import Batch, EncodedSample, Packer, encode_segments
from tasks.data.records import SourceRecords
from tasks.data.templates import render

TABLE_VERSION = 1


def examples_from_record(record: dict, task: str, rng: random.Random, dataset: str) -> list[TaskExample]:
    """One ingested record -> examples of `task`. Shapes-world records carry full ground truth;
    plain web pairs (LAION, CC3M, SBU) only support the caption tasks."""
    annotations = record.get("annotations")
    if annotations and "shapes" in annotations:
        from tasks import shapes_world

        out = shapes_world.task_examples(record, task, rng)
        for ex in out:
            ex.dataset = dataset
        return out
    if task not in ("image_text", "caption"):
        raise ValueError(f"dataset {dataset}: records of this source have only captions, not {task!r} data")
    return [TaskExample(task, [Turn(None, record["caption"])], image=record["key"], dataset=dataset)]


class SourcePool:
    """The examples of one mixture dataset read from an ingested source, rendered on demand.

    A web pair gives one example per record. A record with ground truth (the shapes world) may give
    several examples of a task, or none; a table of (record, example number) pairs, made in one pass
    over the records' metadata and kept memory-mapped beside the index, addresses them. Each
    record's examples are drawn from a generator seeded by the stage seed, the dataset and the
    record's key, so example i is the same whenever it is asked for.
    """

    def __init__(self, spec: MixtureDataset, records: SourceRecords, seed: int):
        self.spec, self.records, self.seed = spec, records, seed
        self.images_id = ("source", records.data_dir, records.split)  # pools sharing it share images
        self.table: np.ndarray | None = None
        if records.annotated:
            self.table = self._table()
        elif len(records):
            examples_from_record(records.meta(0), spec.task, random.Random(0), spec.name)  # fails early
        self._size = len(self.table) if self.table is not None else len(records)

    def __len__(self) -> int:
        return self._size

    def _rng(self, key: str) -> random.Random:
        return random.Random(f"{self.seed}:{self.spec.name}:{key}")

    def _record_examples(self, number: int) -> list[TaskExample]:
        meta = self.records.meta(number)
        return examples_from_record(meta, self.spec.task, self._rng(meta["key"]), self.spec.name)

    def _table(self) -> np.ndarray:
        ident = f"v{TABLE_VERSION}:{self.records.digest}:{self.records.split}:{self.spec.name}:{self.spec.task}:{self.seed}"
        name = hashlib.sha256(ident.encode()).hexdigest()[:20]
        folder = getattr(self.records, "folder", None)
        path = folder / "tables" / f"{name}.npy" if folder is not None else None
        if path is not None and path.is_file():
            return np.load(path, mmap_mode="r")
        pairs = array("q")  # 16 bytes per example while the table is made, then on disk
        for number in range(len(self.records)):
            for sub in range(len(self._record_examples(number))):
                pairs.extend((number, sub))
        table = np.frombuffer(pairs, dtype=np.int64).reshape(-1, 2).copy()
        if path is None:
            return table
        try:
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
            np.save(tmp, table)
            os.replace(tmp, path)
        except OSError:  # a read-only source: the table stays in memory for this stage
            return table
        return np.load(path, mmap_mode="r")

    def _locate(self, i: int) -> tuple[int, int]:
        if self.table is None:
            return i, 0
        number, sub = self.table[i]
        return int(number), int(sub)

    def example(self, i: int) -> TaskExample:
        number, sub = self._locate(i)
        return self._record_examples(number)[sub]

    def image_ref(self, i: int) -> int:
        return self._locate(i)[0]

    def load_image(self, ref: int):
        return self.records.image(ref)


class ListPool:
    """The examples of an annotation-file dataset (`format:`), images read from `image_root`."""

    def __init__(self, spec: MixtureDataset, examples: list[TaskExample], root: Path):
        self.spec, self.examples, self.root = spec, examples, root
        self.images_id = ("files", str(root))

    def __len__(self) -> int:
        return len(self.examples)

    def example(self, i: int) -> TaskExample:
        return self.examples[i]

    def image_ref(self, i: int) -> str:
        return str(self.examples[i].image)

    def load_image(self, ref: str):
        from PIL import Image

        return Image.open(self.root / ref).convert("RGB")


ExamplePool = SourcePool | ListPool


def build_pools(stage: StageSpec, data_dirs: dict[str, str | Path], log=None) -> list[ExamplePool]:
    pools: list[ExamplePool] = []
    opened: dict[tuple[str, str], SourceRecords] = {}  # one index (and one set of open files) per split
    for ds in stage.mixture.datasets:
        if ds.source is not None:
            where = (str(data_dirs[ds.source]), ds.split or "train")
            if where not in opened:
                opened[where] = SourceRecords(*where, log=log)
            pools.append(SourcePool(ds, opened[where], stage.seed))
        else:
            from tasks.data.formats import load_examples

            examples = list(load_examples(ds.format, ds.annotations, ds.image_root))
            for ex in examples:
                ex.dataset = ds.name
            pools.append(ListPool(ds, examples, Path(ds.image_root) if ds.image_root else Path(".")))
        if not len(pools[-1]):
            raise ValueError(f"stage {stage.name}: dataset {ds.name} has no {ds.task} examples")
    return pools


class LRUCache:
    """Tensors by key, evicting the least recently used beyond `max_bytes` (0 = keep nothing)."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self._items: OrderedDict[Any, torch.Tensor] = OrderedDict()

    def get(self, key):
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if size > self.max_bytes or key in self._items:
            return
        self._items[key] = value
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()

    def __len__(self) -> int:
        return len(self._items)


class ImageSource(torch.utils.data.Dataset):
    """Image reference (pool number, pool's image ref) -> what the model takes for that image: the
    preprocessed pixels, or, for a pool with a feature cache, the cached Q-Former outputs.
    Used as a map-style dataset by the DataLoader's workers (each keeps its own cache)."""

    def __init__(self, pools: list[ExamplePool], preprocess, *, cache_mb: int = 256, features=None):
        self.pools, self.preprocess = pools, preprocess
        self.features = features or {}  # pool number -> tasks.data.features.FeatureReader
        self.cache = LRUCache(cache_mb * 2**20)

    def __getitem__(self, ref: tuple[int, Any]) -> torch.Tensor:
        pool_no, image_ref = ref
        reader = self.features.get(pool_no)
        if reader is not None:
            return reader.read(image_ref)
        pool = self.pools[pool_no]
        key = (pool.images_id, image_ref)  # one entry per image, whichever of its datasets drew it
        cached = self.cache.get(key)
        if cached is None:
            cached = self.preprocess([pool.load_image(image_ref)])[0]
            self.cache.put(key, cached)
        return cached

    def __len__(self) -> int:  # the refs are not a range: a batch sampler names them
        raise TypeError("ImageSource is addressed by image reference, not by position")

    @property
    def kind(self) -> str:
        return "features" if self.features else "pixels"


def _worker_signals(_worker_id: int) -> None:
    """A loader worker leaves stop requests to the training process (which ends it) instead of
    running the stage's own handlers, inherited at the fork: Ctrl-C is ignored, SIGTERM ends it."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _worker_error(exc: Exception) -> Exception:
    """A worker's error as its own one line: torch re-raises it with the worker's whole traceback
    in the message ("Caught ValueError in DataLoader worker process 0. Original Traceback ...")."""
    text = str(exc)
    if not (text.startswith("Caught ") and "Original Traceback" in text):
        return exc
    last = text.strip().splitlines()[-1]  # "ValueError: <the message>"
    try:
        return type(exc)(last.partition(": ")[2] or last)
    except Exception:
        return RuntimeError(last)


def _stack(items: list[torch.Tensor]) -> torch.Tensor | None:
    return torch.stack(items) if items else None


ENCODED_CACHE_SIZE = 200_000  # encodings kept for reuse (a few hundred bytes each), then cleared


class _WatchedRandom(random.Random):
    """A seeded generator that records whether anything was drawn from it."""

    used = False

    def random(self) -> float:
        self.used = True
        return super().random()

    def getrandbits(self, k: int) -> int:
        self.used = True
        return super().getrandbits(k)


class StageData:
    """Batches for one stage and one data-parallel rank."""

    def __init__(
        self,
        stage: StageSpec,
        pools: list[ExamplePool],
        tokenizer,
        *,
        image_token_id: int,
        num_query_tokens: int,
        preprocess,
        rows: int | None = None,
        packing: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
        features: dict | None = None,
    ):
        self.stage, self.pools, self.tokenizer = stage, pools, tokenizer
        self.image_token_id, self.num_query_tokens = image_token_id, num_query_tokens
        self.sampler = MixtureSampler(
            [p.spec.weight for p in pools],
            [len(p) for p in pools],
            seed=stage.seed,
            semantics=stage.mixture.semantics,
            batch_sizes=[p.spec.batch_size for p in pools],
            rank=rank,
            world_size=world_size,
        )
        pad_id = pad_token_id(tokenizer)
        self.packer = Packer(
            rows or stage.schedule.batch_size,
            stage.max_len,
            pad_id,
            packing=stage.packing if packing is None else packing,
        )
        self.truncated = 0
        self._encoded: dict[tuple[int, int], tuple] = {}  # draw-independent encodings (encode)
        self.images = ImageSource(pools, preprocess, cache_mb=stage.loader.image_cache_mb, features=features)

    @classmethod
    def for_model(cls, stage: StageSpec, pools: list[ExamplePool], built, **kwargs: Any) -> StageData:
        """StageData for a built model (model.build.BuiltModel): its tokenizer, image token,
        query-token count and preprocessing."""
        return cls(
            stage,
            pools,
            built.tokenizer,
            image_token_id=built.model.image_token_id,
            num_query_tokens=built.preset.num_query_tokens,
            preprocess=built.preprocess,
            **kwargs,
        )

    @property
    def uses_features(self) -> bool:
        return self.images.kind == "features"

    def encode(self, ref: SampleRef) -> EncodedSample:
        pool = self.pools[ref.dataset]
        key = (ref.dataset, ref.example)
        cached = self._encoded.get(key)
        if cached is None:
            example = pool.example(ref.example)
            # the instruction choice is seeded by the draw number: a resumed stream renders the same
            # text. A rendering that drew nothing (no instruction pool: stages 1-2) is the same at
            # every draw, so it is kept for the example's next draw.
            rng = _WatchedRandom(f"{self.stage.seed}:{ref.draw}")
            segments = render(
                example,
                self.stage.template,
                end_sym=self.stage.end_sym,
                instructions=pool.spec.instructions,
                rng=rng,
            )
            ids, labels, truncated = encode_segments(
                segments,
                self.tokenizer,
                image_token_id=self.image_token_id,
                num_query_tokens=self.num_query_tokens if example.has_image else 0,
                max_len=self.stage.max_len,
            )
            image = (ref.dataset, pool.image_ref(ref.example)) if example.has_image else None
            cached = (ids, labels, truncated, image)
            if not rng.used:
                if len(self._encoded) >= ENCODED_CACHE_SIZE:
                    self._encoded.clear()
                self._encoded[key] = cached
        ids, labels, truncated, image = cached
        self.truncated += truncated
        return EncodedSample(ids, labels, image=image, dataset=ref.dataset, ref=ref, truncated=truncated)

    def next_batch(self) -> tuple[Batch, torch.Tensor | None]:
        batch = self.next_tokens()
        return batch, self.pixels(batch)

    def next_tokens(self) -> Batch:
        """The next batch's tokens only: a data-parallel rank takes its rows of it (Batch.select_rows)
        and loads the images of those rows alone (`pixels`, or a StageLoader's workers)."""
        return self.packer.next_batch(lambda: self.encode(next(self.sampler)))

    def pixels(self, batch: Batch) -> torch.Tensor | None:
        """The images of `batch` (pixels, or cached features), in the row-major order of its image
        tokens, loaded in this process."""
        return _stack([self.images[ref] for ref in batch.images])

    def state_dict(self) -> dict[str, Any]:
        carry = [(r.draw, r.dataset, r.example) for r in self.packer.carry_refs()]
        return {"sampler": self.sampler.state_dict(), "carry": carry, "truncated": self.truncated}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.packer.carry = [self.encode(SampleRef(*c)) for c in state["carry"]]
        self.truncated = int(state.get("truncated", 0))


@dataclass
class LoadedBatch:
    batch: Batch  # the global batch (tokens)
    images: torch.Tensor | None  # this rank's rows' images: pixels or features, row-major
    state: dict[str, Any]  # the data state right after this batch (what a checkpoint saves)
    wait_s: float = 0.0  # how long the training process waited for it


class _TokensAhead:
    """Makes the token batches (mixture, rendering, tokenising, packing) in a background thread,
    `depth` batches ahead, each with the data state right after it. Only this thread touches the
    StageData once it runs, so the stream is the one a plain loop would draw, in the same order."""

    _END = object()

    def __init__(self, data: StageData, depth: int):
        import queue
        import threading

        self.data = data
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vlmpipe-tokens", daemon=True)
        self._started = False

    def _run(self) -> None:
        import queue

        while not self._stop.is_set():
            try:
                item = (self.data.next_tokens(), None)
                item = (item[0], self.data.state_dict())
            except BaseException as exc:  # handed to the training process, raised there
                item = (self._END, exc)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.5)
                    break
                except queue.Full:
                    continue
            if item[0] is self._END:
                return

    def get(self) -> tuple[Batch, dict]:
        if not self._started:
            self._started = True
            self._thread.start()
        batch, state = self._queue.get()
        if batch is self._END:
            raise state
        return batch, state

    def close(self) -> None:
        self._stop.set()
        if self._started:
            self._thread.join(timeout=10)


class _Plan:
    """The loader's batch sampler: walks the token stream in order and, for each batch, names the
    images of this rank's rows; the batch itself waits in `pending` for its images to come back."""

    def __init__(self, tokens: _TokensAhead, rows_of: Callable[[Batch], Batch]):
        self.tokens, self.rows_of = tokens, rows_of
        self.pending: deque[tuple[Batch, dict]] = deque()

    def __iter__(self) -> Iterator[list]:
        while True:
            batch, state = self.tokens.get()
            self.pending.append((batch, state))
            yield list(self.rows_of(batch).images)


class StageLoader:
    """Batches with their images loaded ahead by `stage.loader.workers` processes.

    A thread makes the token batches two ahead of what the DataLoader asks for, and the DataLoader
    asks the plan for `workers x prefetch` batches ahead, so the token stream runs that far in front
    of the step; each batch carries the data state of its own position, and
    `state_dict()` gives the state after the last batch handed out, so a checkpoint resumes exactly
    where training was, not where the lookahead was.
    """

    def __init__(self, data: StageData, rows_of: Callable[[Batch], Batch], *, pin_memory: bool = False):
        self.data = data
        self._state = data.state_dict()
        spec = data.stage.loader
        self._tokens = _TokensAhead(data, depth=2)
        self._plan = _Plan(self._tokens, rows_of)
        self._loader = torch.utils.data.DataLoader(
            data.images,
            batch_sampler=self._plan,
            num_workers=spec.workers,
            prefetch_factor=spec.prefetch if spec.workers else None,
            collate_fn=_stack,
            pin_memory=pin_memory,
            worker_init_fn=_worker_signals,
            # its own generator: starting the iterator would otherwise draw a seed from torch's
            # global RNG, and a resumed stage (which starts it at another step) would then draw
            # other dropout masks than a stage never stopped
            generator=torch.Generator().manual_seed(data.stage.seed),
        )
        self._iter = None

    def __iter__(self) -> StageLoader:
        return self

    def __next__(self) -> LoadedBatch:
        import time

        started = time.perf_counter()
        if self._iter is None:
            self._iter = iter(self._loader)
        try:
            images = next(self._iter)
        except Exception as exc:
            raise _worker_error(exc) from None
        batch, state = self._plan.pending.popleft()
        self._state = state
        return LoadedBatch(batch, images, state, time.perf_counter() - started)

    def state_dict(self) -> dict[str, Any]:
        return self._state

    def close(self) -> None:
        """Stop the token thread and the workers (also done when the loader is garbage-collected)."""
        self._tokens.close()
        it, self._iter = self._iter, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            try:
                it._shutdown_workers()
            except RuntimeError as exc:  # torch reports a worker's exit status while joining it:
                if "DataLoader worker" not in str(exc):  # the data is no longer needed, so a worker
                    raise  # that fails on its way out cannot hurt the stage; anything else can
