"""Shared fixtures for model tests: one tiny tokenizer per session and a seeded tiny model factory."""

from __future__ import annotations

import pytest
import torch

from model import IMAGE_TOKEN, LoraSettings, VisionLanguageModel, get_preset, load_tokenizer

# Small LoRA rank keeps the tiny model tiny; dropout 0 keeps train-mode comparisons deterministic.
TEST_LORA = LoraSettings(r=4, alpha=8, dropout=0.0)


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer(get_preset("tiny"))


@pytest.fixture
def make_model(tokenizer):
    def make(seed: int = 0, lora: LoraSettings | None = TEST_LORA, preset="tiny") -> VisionLanguageModel:
        torch.manual_seed(seed)
        model = VisionLanguageModel.from_preset(preset, tokenizer, lora=lora)
        # Non-zero LoRA B so adapters take part in the computation being checked.
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0.0, 0.02)
        return model

    return make


@pytest.fixture
def encode(tokenizer):
    """Token ids for a text where each `{img}` becomes one image's run of query tokens."""

    def encode_text(text: str, queries: int = 8) -> list[int]:
        return tokenizer(text.replace("{img}", IMAGE_TOKEN * queries))["input_ids"]

    return encode_text


def random_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=generator)


@pytest.fixture
def images():
    """Seeded random pixel tensors [n, 3, size, size] (already "normalised")."""
    return random_images
