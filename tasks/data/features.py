"""Cached frozen features in place of pixels: when a stage trains neither the vision tower nor the
Q-Former, their output for an image never changes, so a stage can read it from the feature cache
the ingest wrote (tasks/ingest/features.py) instead of running ViT-g every step.

A cache is used only when it was made at the stage's image size with exactly the tower weights
the stage holds (a sha256 over every tower tensor), and when every shard it
covers is still the shard the manifest names. Anything else is refused with one line saying which
of these differs; the stage then reads pixels (`frozen_features: auto`) or stops (`require`).
Features are used only when every image dataset of the stage has such a cache: a batch never
mixes pixels and features.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from data_specs.stages import StageSpec
from tasks.data.records import SourceRecords


class FeatureCacheError(ValueError):
    """A stage with `frozen_features: require` found no usable cache."""


class FeatureReader:
    """Cached Q-Former outputs of one split of a source, read row by row (memory stays flat)."""

    def __init__(self, records: SourceRecords, folder: Path):
        self.records, self.folder = records, Path(folder)
        self.index = json.loads((self.folder / "index.json").read_text())
        self._files: dict[str, object] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_files"] = {}
        return state

    def read(self, number: int) -> torch.Tensor:
        from safetensors import safe_open

        if self._pid != os.getpid():  # a forked loader worker opens its own files
            self._files, self._pid = {}, os.getpid()
        shard, position = self.records.location(number)
        handle = self._files.get(shard)
        if handle is None:
            entry = self.index["shards"][shard]
            handle = self._files[shard] = safe_open(str(self.folder / entry["path"]), framework="pt")
        return handle.get_slice("features")[position : position + 1][0].float()


def tower_digest(model) -> str:
    """The digest the ingest's feature cache is keyed by, for this model's frozen towers."""
    from tasks.ingest.features import Towers

    return Towers(model.vision, model.qformer, None, model.preset.name, model.preset.image_size).digest()


def _why_not(index: dict, image_size: int, digest: str, manifest: dict) -> str | None:
    # the preset's name is not compared: TinyGPT-V's presets share BLIP-2's towers, and the digest
    # below says whether the weights are the same
    if index.get("image_size") != image_size:
        return f"made at {index.get('image_size')} px, the stage runs at {image_size} px"
    if index.get("tower_digest") != digest:
        return (
            f"made with other tower weights ({str(index.get('tower_digest'))[:12]}, the stage's are "
            f"{digest[:12]}): rebuild it from this checkpoint's towers"
        )
    shards = index.get("shards", {})
    for shard in manifest["shards"]:
        name = Path(shard["path"]).stem
        entry = shards.get(name)
        if entry is None:
            return f"stale: shard {name} is not in the cache"
        if entry.get("source_sha256") != shard.get("sha256"):
            return f"stale: shard {name} changed since the cache was made"
    return None


def select_feature_readers(
    stage: StageSpec, pools: list, model, log: Callable[[str], None]
) -> dict[int, FeatureReader]:
    """Pool number -> reader, for every image pool, or {} (the stage reads pixels)."""
    from tasks.data.stage_data import SourcePool
    from tasks.ingest.read import load_manifest

    if stage.frozen_features == "off":
        return {}

    def refuse(reason: str, *, found: bool = True) -> dict:
        """`found`: a cache exists but does not fit (said in auto mode too); without one, auto
        reads pixels silently."""
        if stage.frozen_features == "require":
            raise FeatureCacheError(f"stage {stage.name}: frozen_features: require, but {reason}")
        if found:
            log(f"stage {stage.name}: reading pixels, not cached features: {reason}")
        return {}

    trained = [g for g in ("vision", "qformer") if g in stage.trainable]
    if "mm_adapter" in stage.trainable and hasattr(model.vision.vit, "mm_adapter"):
        trained.append("the vision tower's MM-Adapters")
    if trained:
        if stage.frozen_features == "require":
            return refuse(f"the stage trains {' and '.join(trained)}")
        return {}
    size = model.preset.image_size
    digest: str | None = None
    readers: dict[int, FeatureReader] = {}
    for number, pool in enumerate(pools):
        name = pool.spec.name
        if not isinstance(pool, SourcePool):
            return refuse(
                f"dataset {name} reads image files (format {pool.spec.format}), which have no cache"
            )
        records = pool.records
        folder = getattr(records, "folder", None)
        if folder is None:
            return refuse(f"dataset {name} is held in memory", found=False)
        caches = sorted((Path(records.data_dir) / "features").glob("*/index.json"))
        if not caches:
            return refuse(f"source of dataset {name} ({records.data_dir}) has no feature cache", found=False)
        digest = digest or tower_digest(model)
        manifest = load_manifest(records.data_dir)
        reasons = []
        for path in caches:
            index = json.loads(path.read_text())
            why = _why_not(index, size, digest, manifest)
            if why is None:
                readers[number] = FeatureReader(records, path.parent)
                break
            reasons.append(f"{path.parent}: {why}")
        else:
            return refuse(f"no feature cache of dataset {name} fits ({'; '.join(reasons)})")
    if readers:
        log(f"stage {stage.name}: reading cached frozen features for {len(readers)} dataset(s), not pixels")
    return readers
