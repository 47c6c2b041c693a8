"""Shared fixtures for model tests: one tiny tokenizer per session and a seeded tiny model factory."""

from __future__ import annotations

import pytest
import torch

from model import IMAGE_TOKEN, LoraSettings, VisionLanguageModel, get_preset, load_tokenizer

# Small LoRA rank keeps the tiny model tiny; dropout 0 keeps train-mode comparisons deterministic.
TEST_LORA = LoraSettings(r=4, alpha=8, dropout=0.0)


def sample_corpus() -> list[str]:
    """A fixed text sample in the style of the shapes world for the model tests (their texts are
    chosen to tokenise to equal lengths with it). Covers the TinyGPT-V text conventions (prompt
    template, task identifiers, boxes, grounded phrases) so the tiny BPE learns merges for them."""
    colours = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
    shapes = ["circle", "square", "triangle", "star", "cross", "ring"]
    tasks = ["[vqa]", "[caption]", "[refer]", "[identify]", "[grounding]", "[detection]"]
    lines = []
    for i, colour in enumerate(colours):
        for j, shape in enumerate(shapes):
            x, y = (7 * i + 3 * j) % 90, (11 * j + 5 * i) % 90
            box = f"{{<{x}><{y}><{x + 10}><{y + 10}>}}"
            task = tasks[(i + j) % len(tasks)]
            lines.append(f"###Human: <Img>{IMAGE_TOKEN}</Img> {task} What is in the image? ###Assistant: ")
            lines.append(
                f"A {colour} {shape} on a plain background. There is one {shape} and it is {colour}."
            )
            lines.append(f"<p>{colour} {shape}</p> {box}")
            lines.append(f"Where is the {colour} {shape}? {box} The answer is {colour}.\n###")
    return lines


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer(get_preset("tiny"), corpus=sample_corpus())


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
