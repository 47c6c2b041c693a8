"""EIM's contrastive losses and their queues of keys, for the training loop.

`CONTRASTIVE_LOSSES` maps each name of data_specs.registry.CONTRASTIVE_LOSSES to a function with one
signature: loss(model, inputs_embeds, input_ids, pixels, *, segment_ids, attention_mask, temperature,
queue) -> (loss, samples).

A queue is built once per stage, before its first step, from the stage's own training batches (the
first `contrastive.queue` samples of its mixture), with the parts the loss keeps frozen: lossST's
mean word embeddings, lossLM's last-token states of the LM with its adapters off, lossIE's caption
features. It is kept beside the stage's checkpoints (`contrastive_keys.safetensors`, with the loss,
size and stage fingerprint in its header), so a resumed stage reads it instead of building it again.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from model.losses import (
    adapters_off,
    caption_features,
    image_encoder_loss,
    language_model_loss,
    last_token_states,
    semantic_transform_loss,
    text_means,
)

KEYS_FILE = "contrastive_keys.safetensors"


def _semantic_transform(model, embeds, ids, pixels, **kw):
    return semantic_transform_loss(embeds, ids, model.image_token_id, **kw)


def _language_model(model, embeds, ids, pixels, **kw):
    return language_model_loss(model, embeds, ids, **kw)


def _image_encoder(model, embeds, ids, pixels, **kw):
    if pixels is None:
        raise ValueError("lossIE needs the images' pixels (the vision tower trains: no feature cache)")
    return image_encoder_loss(model, pixels, ids, **kw)


CONTRASTIVE_LOSSES: dict[str, Callable[..., Any]] = {
    "semantic_transform": _semantic_transform,
    "language_model": _language_model,
    "image_encoder": _image_encoder,
}


@torch.no_grad()
def batch_keys(loss: str, model, ids, pixels, segs, mask, *, image_features=None) -> torch.Tensor:
    """The keys one batch contributes to `loss`'s queue [samples, D]; images as pixels or as cached
    Q-Former outputs (`image_features`)."""
    if loss == "semantic_transform":
        words = model.language_model.get_input_embeddings()(ids)
        return text_means(words, ids, model.image_token_id, segs, mask).float()
    if loss == "language_model":
        embeds = model.embed_inputs(ids, pixels, image_features=image_features)
        with adapters_off(model):
            return last_token_states(model, embeds, ids, segs, mask).float()
    if loss == "image_encoder":
        return caption_features(model, ids, segs, mask).float()
    raise ValueError(f"no keys for contrastive loss {loss!r}")


def stage_queue(
    stage,
    model,
    make_data: Callable[[], Any],
    output_dir: Path,
    device: torch.device,
    *,
    fingerprint: str,
    write: bool = True,
    log: Callable[[str], None] = print,
) -> torch.Tensor | None:
    """The stage's queue of keys (None without `contrastive.queue`): read from `output_dir` when a
    queue for the same loss, size and stage spec is there, else built from `make_data()` batches and
    written (atomically) when `write`."""
    import safetensors.torch

    spec = stage.contrastive
    if spec is None or not spec.queue:
        return None
    path = Path(output_dir) / KEYS_FILE
    meta = {"loss": spec.loss, "size": str(spec.queue), "stage_sha256": fingerprint}
    if path.is_file():
        try:
            with safetensors.safe_open(str(path), "pt") as handle:
                if handle.metadata() == meta:
                    keys = handle.get_tensor("keys")
                    log(f"stage {stage.name}: {len(keys)} {spec.loss} keys read from {path}")
                    return keys.to(device)
        except Exception:  # a damaged or foreign file is rebuilt, never trusted
            pass
    data = make_data()
    was_training = model.training
    model.eval()
    collected, total = [], 0
    try:
        for _ in range(10_000):
            batch, pixels = data.next_batch()
            ids = batch.input_ids.to(device)
            segs = batch.segment_ids.to(device)
            mask = batch.attention_mask.to(device)
            pix = None if pixels is None else pixels.to(device)
            if data.uses_features:  # cached Q-Former outputs, not pixels
                keys = batch_keys(spec.loss, model, ids, None, segs, mask, image_features=pix)
            else:
                keys = batch_keys(spec.loss, model, ids, pix, segs, mask)
            collected.append(keys)
            total += len(keys)
            if total >= spec.queue:
                break
    finally:
        model.train(was_training)
    keys = torch.cat(collected)[: spec.queue].contiguous()
    if len(keys) < spec.queue:
        log(f"stage {stage.name}: only {len(keys)} samples for a queue of {spec.queue}")
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            safetensors.torch.save_file({"keys": keys.cpu()}, str(tmp), metadata=meta)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    log(f"stage {stage.name}: {len(keys)} {spec.loss} keys built from its training batches -> {path}")
    return keys.to(device)
