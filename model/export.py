"""Export a trained model with LoRA folded in, in Hugging Face format, and load it back.

Folder layout (every weight file is safetensors; nothing in it runs code when loaded):

    language_model/          transformers Phi (config.json + model.safetensors), LoRA merged. TinyGPT-V's
                             post-attention RMSNorm weights (and MM-Adapters, when the model has
                             them) are in the same file (`model.layers.N.post_attention_norm.*`,
                             `mm_adapter.*`); stock `PhiForCausalLM.from_pretrained` loads the
                             rest and ignores them, `load_merged` puts them back
    vision_model/            transformers Blip2VisionModel (config.json + model.safetensors)
    qformer/                 transformers Blip2QFormerModel (config.json + model.safetensors); absent
                             for a token-merge preset, which has no bridge weights
    connector.safetensors    the query tokens (Q-Former presets) and the two projection Linears
    tokenizer/               the tokenizer (tokenizer.json, special tokens)
    preprocessor_config.json transformers BlipImageProcessor settings (size, mean, std, bicubic)
    vlmpipe.json             preset, ablations, MM-Adapter settings, template, end symbol, source
                             checkpoint; written last

The export is written in a hidden sibling folder and renamed into place, so a killed export leaves
nothing that `load_merged` accepts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

FORMAT = "vlmpipe-merged"
MANIFEST = "vlmpipe.json"


class ExportError(ValueError):
    """An export folder that cannot be written or read; `str()` is one line naming the path."""


def export_merged(built: Any, out: str | Path, *, template: str, end_sym: str, source: str) -> Path:
    """Write `built` (model.build.BuiltModel) to `out` with LoRA folded in. `out` must not exist or
    be an empty folder. The model in `built` is merged in place (it answers as before)."""
    from transformers import BlipImageProcessor
    from transformers.image_utils import PILImageResampling

    from .checkpoint import _fsync_tree
    from .inference import merge_lora

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out}: exists and is not an empty folder; choose a new output folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    model = built.model
    merged = merge_lora(model)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        model.language_model.save_pretrained(tmp / "language_model", safe_serialization=True)
        model.vision.vit.save_pretrained(tmp / "vision_model", safe_serialization=True)
        connector = {}
        if hasattr(model.qformer, "transformer"):  # a Q-Former (a token merge has no weights)
            model.qformer.transformer.save_pretrained(tmp / "qformer", safe_serialization=True)
            connector["query_tokens"] = model.qformer.query_tokens.detach()
        connector.update({f"projection.{k}": v.detach() for k, v in model.projection.state_dict().items()})
        safetensors.torch.save_file(
            {k: v.contiguous().cpu() for k, v in connector.items()}, str(tmp / "connector.safetensors")
        )
        built.tokenizer.save_pretrained(tmp / "tokenizer")
        preset = built.preset
        BlipImageProcessor(
            do_resize=True,
            size={"height": preset.image_size, "width": preset.image_size},
            resample=PILImageResampling.BICUBIC,
            do_rescale=True,
            rescale_factor=1 / 255,
            do_normalize=True,
            image_mean=list(preset.image_mean),
            image_std=list(preset.image_std),
            do_convert_rgb=True,
        ).save_pretrained(tmp)
        manifest = {
            "format": FORMAT,
            "version": 1,
            "preset": preset.name,
            "image_size": preset.image_size,
            "num_query_tokens": preset.num_query_tokens,
            "template": template,
            "end_sym": end_sym,
            "source_checkpoint": str(source),
            "lora_layers_merged": merged,
            "ablate": list(getattr(model, "ablated", ())),
            "mm_adapter": None
            if getattr(model, "mm_adapter_settings", None) is None
            else dataclasses.asdict(model.mm_adapter_settings),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _fsync_tree(tmp)  # everything on disk before the rename makes it visible
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(f"{path}: missing; not a vlmpipe merged export") from None
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: unreadable ({' '.join(str(exc).split())})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ExportError(f"{path}: field format is not {FORMAT!r}")
    return manifest


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load_file(str(path))
    except FileNotFoundError:
        raise ExportError(f"{path}: missing") from None
    except Exception as exc:  # safetensors raises its own error type for a corrupt header
        raise ExportError(f"{path}: unreadable ({' '.join(str(exc).split())})") from None


def load_merged(folder: str | Path) -> tuple[Any, dict[str, Any]]:
    """(BuiltModel, manifest) from an export: the language model through transformers'
    `PhiForCausalLM.from_pretrained`, TinyGPT-V's post-attention norms put back, the towers and the
    connector from their files. The model has no LoRA group and is in eval mode."""
    from transformers import PhiForCausalLM

    from .build import BuiltModel
    from .image_processing import ImagePreprocessor
    from .presets import get_preset
    from .vlm import VisionLanguageModel

    folder = Path(folder)
    manifest = read_manifest(folder)
    preset = get_preset(manifest["preset"])
    if int(manifest["image_size"]) != preset.image_size:
        preset = preset.with_image_size(int(manifest["image_size"]))
    from transformers import AutoTokenizer

    if not (folder / "tokenizer").is_dir():
        raise ExportError(f"{folder / 'tokenizer'}: missing")
    tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    from .lora import MMAdapterSettings

    mm = manifest.get("mm_adapter")
    model = VisionLanguageModel.from_preset(
        preset,
        tokenizer,
        lora=None,
        ablate=tuple(manifest.get("ablate") or ()),
        mm_adapter=MMAdapterSettings(**mm) if mm else None,
    )
    lm_dir = folder / "language_model"
    weights = _tensors(lm_dir / "model.safetensors")
    try:
        model.language_model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise ExportError(f"{lm_dir / 'model.safetensors'}: {str(exc).splitlines()[0]}") from None
    # the folder is a real transformers checkpoint: what transformers builds from it must agree
    reference = PhiForCausalLM.from_pretrained(lm_dir, attn_implementation=preset.attn_implementation)
    own = model.language_model.state_dict()
    for key, value in reference.state_dict().items():
        if key not in weights:  # e.g. an input LayerNorm the input_layernorm ablation removed
            continue
        if key not in own or not torch.equal(own[key], value):
            raise ExportError(f"{lm_dir}: transformers reads {key} differently from {MANIFEST}'s preset")
    del reference
    parts = [("vision_model", model.vision.vit)]
    if hasattr(model.qformer, "transformer"):
        parts.append(("qformer", model.qformer.transformer))
    for part, module in parts:
        state = _tensors(folder / part / "model.safetensors")
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ExportError(f"{folder / part / 'model.safetensors'}: {str(exc).splitlines()[0]}") from None
    connector = _tensors(folder / "connector.safetensors")
    try:
        if hasattr(model.qformer, "query_tokens"):
            model.qformer.query_tokens.data.copy_(connector.pop("query_tokens"))
        model.projection.load_state_dict({k.removeprefix("projection."): v for k, v in connector.items()})
    except (KeyError, RuntimeError) as exc:
        raise ExportError(f"{folder / 'connector.safetensors'}: {str(exc).splitlines()[0]}") from None
    model.eval()
    return BuiltModel(model, tokenizer, preset, ImagePreprocessor.from_preset(preset)), manifest
