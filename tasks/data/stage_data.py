"""A stage's training data: example pools per mixture dataset, the seeded mixture stream, rendering
through the template registry, encoding and packing into batches with pixels.

Pools come from ingested shards (`source:` datasets) or from official annotation files
(`format:` datasets). The whole iterator state (mixture position plus samples waiting in the
packer) is a small dict, saved in every checkpoint so a killed stage resumes the same stream.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from data_specs.stages import MixtureDataset, StageSpec
from model.tokenizer import pad_token_id
from tasks.data.examples import TaskExample, Turn
from tasks.data.mixture import MixtureSampler, SampleRef
from tasks.data.packing import Batch, EncodedSample, Packer, encode_segments
from tasks.data.templates import render


@dataclass
class ExamplePool:
    """The examples of one mixture dataset and a way to turn their image references into pixels."""

    spec: MixtureDataset
    examples: list[TaskExample]
    load_image: Callable[[str], Any]  # image reference -> PIL.Image
    _pixels: dict[str, torch.Tensor] = field(default_factory=dict)

    def pixels(self, ref: str, preprocess) -> torch.Tensor:
        cached = self._pixels.get(ref)
        if cached is None:
            cached = preprocess([self.load_image(ref)])[0]
            self._pixels[ref] = cached
        return cached


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


_RECORD_CACHE: dict[tuple[str, str | None], list[dict]] = {}


def _records(data_dir: Path, split: str | None) -> list[dict]:
    """Read (once per process) the records of an ingested source; small sources only."""
    from tasks.ingest import read_records

    key = (str(data_dir), split)
    if key not in _RECORD_CACHE:
        _RECORD_CACHE[key] = list(read_records(data_dir, split=split))
    return _RECORD_CACHE[key]


def build_pools(stage: StageSpec, data_dirs: dict[str, str | Path]) -> list[ExamplePool]:
    pools: list[ExamplePool] = []
    for ds in stage.mixture.datasets:
        rng = random.Random(f"{stage.seed}:{ds.name}")
        if ds.source is not None:
            records = _records(Path(data_dirs[ds.source]), ds.split or "train")
            images = {r["key"]: r["image"] for r in records}
            examples = [ex for r in records for ex in examples_from_record(r, ds.task, rng, ds.name)]
            pools.append(ExamplePool(ds, examples, images.__getitem__))
        else:
            from PIL import Image

            from tasks.data.formats import load_examples

            examples = list(load_examples(ds.format, ds.annotations, ds.image_root))
            for ex in examples:
                ex.dataset = ds.name
            root = Path(ds.image_root) if ds.image_root else Path(".")
            pools.append(
                ExamplePool(ds, examples, lambda ref, root=root: Image.open(root / ref).convert("RGB"))
            )
        if not pools[-1].examples:
            raise ValueError(f"stage {stage.name}: dataset {ds.name} has no {ds.task} examples")
    return pools


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
    ):
        self.stage, self.pools, self.tokenizer = stage, pools, tokenizer
        self.image_token_id, self.num_query_tokens, self.preprocess = (
            image_token_id,
            num_query_tokens,
            preprocess,
        )
        self.sampler = MixtureSampler(
            [p.spec.weight for p in pools],
            [len(p.examples) for p in pools],
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

    def encode(self, ref: SampleRef) -> EncodedSample:
        pool = self.pools[ref.dataset]
        example = pool.examples[ref.example]
        # the instruction choice is seeded by the draw number: a resumed stream renders the same text
        segments = render(
            example,
            self.stage.template,
            end_sym=self.stage.end_sym,
            instructions=pool.spec.instructions,
            rng=random.Random(f"{self.stage.seed}:{ref.draw}"),
        )
        ids, labels, truncated = encode_segments(
            segments,
            self.tokenizer,
            image_token_id=self.image_token_id,
            num_query_tokens=self.num_query_tokens if example.has_image else 0,
            max_len=self.stage.max_len,
        )
        self.truncated += truncated
        image = (ref.dataset, example.image) if example.has_image else None
        return EncodedSample(ids, labels, image=image, dataset=ref.dataset, ref=ref, truncated=truncated)

    def next_batch(self) -> tuple[Batch, torch.Tensor | None]:
        batch = self.next_tokens()
        return batch, self.pixels(batch)

    def next_tokens(self) -> Batch:
        """The next batch's tokens only: a data-parallel rank takes its rows of it (Batch.select_rows)
        and loads the pixels of those rows alone (`pixels`)."""
        return self.packer.next_batch(lambda: self.encode(next(self.sampler)))

    def pixels(self, batch: Batch) -> torch.Tensor | None:
        """The images of `batch`, in the row-major order of its image tokens."""
        if not batch.images:
            return None
        return torch.stack([self.pools[d].pixels(ref, self.preprocess) for d, ref in batch.images])

    def state_dict(self) -> dict[str, Any]:
        carry = [(r.draw, r.dataset, r.example) for r in self.packer.carry_refs()]
        return {"sampler": self.sampler.state_dict(), "carry": carry, "truncated": self.truncated}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.packer.carry = [self.encode(SampleRef(*c)) for c in state["carry"]]
        self.truncated = int(state.get("truncated", 0))
