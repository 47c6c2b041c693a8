"""Image preprocessing and loading MiniGPT-4's first projection."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from model import ImagePreprocessor, get_preset
from model.projection import ImageProjection, load_minigpt4_projection


def test_preprocessor_resizes_converts_and_normalises():
    preset = get_preset("tiny")
    process = ImagePreprocessor.from_preset(preset)
    grey = Image.new("L", (50, 20), color=255)  # non-RGB, non-square
    red = Image.new("RGB", (7, 9), color=(255, 0, 0))
    batch = process([grey, red])
    assert batch.shape == (2, 3, preset.image_size, preset.image_size) and batch.dtype == torch.float32
    mean, std = torch.tensor(preset.image_mean), torch.tensor(preset.image_std)
    torch.testing.assert_close(batch[0, :, 5, 5], (1 - mean) / std)
    torch.testing.assert_close(batch[1, :, 3, 3], (torch.tensor([1.0, 0.0, 0.0]) - mean) / std)
    assert process([]).shape == (0, 3, preset.image_size, preset.image_size)
    assert ImagePreprocessor.from_preset(get_preset("tinygptv-phi2").with_image_size(448)).image_size == 448


def test_projection_starts_as_the_paper_says_and_loads_minigpt4(tmp_path):
    torch.manual_seed(0)
    projection = ImageProjection(16, 32, 8)
    assert torch.all(projection.proj_out.bias == 0)
    assert projection.proj_out.weight.std().item() == pytest.approx(0.02, rel=0.3)
    weight, bias = torch.randn(32, 16), torch.randn(32)
    torch.save({"model": {"llama_proj.weight": weight, "llama_proj.bias": bias}}, tmp_path / "minigpt4.pth")
    load_minigpt4_projection(projection, tmp_path / "minigpt4.pth")
    assert torch.equal(projection.proj_in.weight, weight) and torch.equal(projection.proj_in.bias, bias)
    torch.save({"model": {"other.weight": weight}}, tmp_path / "wrong.pth")
    with pytest.raises(KeyError, match="llama_proj"):
        load_minigpt4_projection(projection, tmp_path / "wrong.pth")
