"""Frozen-feature cache: the vision tower and Q-Former are frozen in every stage, so their output
for an image at one resolution is computed once per shard (batched, fp16) into
<ingest>/features/<preset>-<size>px-<dtype>-<tower digest>/NNNNN.safetensors, keyed by sample key.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from data_specs.sources import FeatureCacheSpec, SourceSpec
from tasks.ingest.prepare import read_json, write_json
from tasks.ingest.read import _raw_samples, _record, load_manifest

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class Towers:
    """The frozen part of the model: pixels -> Q-Former query outputs."""

    vision: torch.nn.Module
    qformer: torch.nn.Module
    preprocess: Callable[[list], torch.Tensor]
    preset: str
    image_size: int

    def digest(self) -> str:
        """sha256 of every tower weight: the cache is valid only for exactly these weights."""
        h = hashlib.sha256()
        for prefix, module in (("vision", self.vision), ("qformer", self.qformer)):
            for name, tensor in sorted(module.state_dict().items()):
                h.update(f"{prefix}.{name}{tuple(tensor.shape)}".encode())
                h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.qformer(self.vision(pixels))


def build_towers(cfg: FeatureCacheSpec) -> Towers:
    """The preset's towers: published weights (pretrained) or random ones from `seed`, built the
    way VisionLanguageModel builds them, so the same seed gives the same towers."""
    from model import ImagePreprocessor, get_preset
    from model.qformer import QueryTransformer
    from model.vision import VisionTower, build_vision_tower

    preset = get_preset(cfg.preset)
    if cfg.image_size is not None:
        preset = preset.with_image_size(cfg.image_size)
    if cfg.pretrained:
        from model import VisionLanguageModel, load_tokenizer

        vlm = VisionLanguageModel.from_preset(preset, load_tokenizer(preset), lora=None, pretrained=True)
        vision, qformer = vlm.vision, vlm.qformer
    else:
        torch.manual_seed(cfg.seed)
        vision = VisionTower(build_vision_tower(preset))
        qformer = QueryTransformer.from_preset(preset)
    return Towers(
        vision.eval(), qformer.eval(), ImagePreprocessor.from_preset(preset), cfg.preset, preset.image_size
    )


def cache_id(towers: Towers, dtype: str, digest: str) -> str:
    return f"{towers.preset}-{towers.image_size}px-{dtype}-{digest[:12]}"


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _encode(
    towers: Towers, images: list, device: torch.device, dtype: torch.dtype, batch: int
) -> torch.Tensor:
    out = []
    # fp16 kernels are a GPU affair; on the CPU compute in fp32 and store in the cache's dtype
    autocast = device.type == "cuda" and dtype != torch.float32
    for i in range(0, len(images), batch):
        pixels = towers.preprocess(images[i : i + batch]).to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            out.append(towers(pixels).to("cpu", dtype))
    return torch.cat(out) if out else torch.zeros(0)


def build_feature_cache(
    spec: SourceSpec,
    output_dir: str | Path,
    *,
    towers: Towers | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Compute (or complete) the cache for every shard in the manifest; returns a small summary.

    `towers` lets training pass the towers it actually freezes (e.g. after their own pre-training);
    by default they are built from the spec's feature_cache block.
    """
    from safetensors.torch import save_file

    cfg = spec.feature_cache or FeatureCacheSpec()
    output_dir = Path(output_dir)
    manifest = load_manifest(output_dir)
    towers = towers or build_towers(cfg)
    device, dtype = _device(cfg.device), DTYPES[cfg.dtype]
    towers.vision.to(device)
    towers.qformer.to(device)
    digest = towers.digest()
    folder = output_dir / "features" / cache_id(towers, cfg.dtype, digest)
    folder.mkdir(parents=True, exist_ok=True)
    index = read_json(folder / "index.json") or {
        "preset": towers.preset,
        "image_size": towers.image_size,
        "dtype": cfg.dtype,
        "tower_digest": digest,
        "source": manifest["source"],
        "shards": {},
    }
    started, computed = time.time(), 0
    for shard in manifest["shards"]:
        name = Path(shard["path"]).stem
        entry = index["shards"].get(name)
        if entry and entry["source_sha256"] == shard["sha256"] and (folder / entry["path"]).is_file():
            continue
        records = [_record(raw) for raw in _raw_samples(output_dir / shard["path"])]
        features = _encode(towers, [r["image"] for r in records], device, dtype, cfg.batch_size)
        keys = [r["key"] for r in records]
        tmp = folder / f"{name}.safetensors.tmp"
        save_file(
            {"features": features.contiguous()},
            str(tmp),
            metadata={"keys": json.dumps(keys), "source_sha256": shard["sha256"]},
        )
        tmp.replace(folder / f"{name}.safetensors")
        index["shards"][name] = {
            "path": f"{name}.safetensors",
            "samples": len(keys),
            "source_sha256": shard["sha256"],
        }
        write_json(folder / "index.json", index)  # after every shard: a killed run keeps what it made
        computed += len(keys)
    write_json(folder / "index.json", index)
    seconds = time.time() - started
    log(
        f"[ingest {spec.name}] feature cache {folder.name}: {computed} images encoded in {seconds:.1f} s "
        f"({sum(e['samples'] for e in index['shards'].values())} cached)"
    )
    return {
        "path": str(folder),
        "cache_id": folder.name,
        "encoded": computed,
        "seconds": round(seconds, 2),
        "samples": sum(e["samples"] for e in index["shards"].values()),
    }


def read_feature_cache(folder: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(sample key, features [Q, hidden]) for every cached sample, shard by shard (for inspecting a
    cache; a training stage reads single rows through tasks.data.features.FeatureReader)."""
    from safetensors import safe_open

    folder = Path(folder)
    index = json.loads((folder / "index.json").read_text())
    for name in sorted(index["shards"]):
        with safe_open(str(folder / index["shards"][name]["path"]), framework="pt") as f:
            keys = json.loads(f.metadata()["keys"])
            features = f.get_tensor("features")
        yield from zip(keys, features, strict=True)


def find_feature_cache(
    output_dir: str | Path, preset: str, image_size: int, tower_digest: str
) -> Path | None:
    """The cache made with exactly these towers at this resolution, if there is one."""
    for index_path in sorted((Path(output_dir) / "features").glob("*/index.json")):
        index = read_json(index_path) or {}
        if (index.get("preset"), index.get("image_size"), index.get("tower_digest")) == (
            preset,
            image_size,
            tower_digest,
        ):
            return index_path.parent
    return None
