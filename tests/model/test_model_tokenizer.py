"""The tiny byte-level BPE tokenizer: determinism, exact round trips, special tokens."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import sample_corpus

from model import IMAGE_TOKEN, build_tiny_tokenizer, get_preset, load_tokenizer

TEXTS = [
    "{<12><34><56><78>}",
    "<p>red circle</p>",
    "###Human: <Img><image><image></Img> [refer] where is it? ###Assistant: {<0><5><100><99>}\n###",
    "  odd  spacing , unicode é ✓ and tabs\tend .",
]


def test_deterministic_for_the_same_corpus():
    corpus = sample_corpus()
    first, second = build_tiny_tokenizer(corpus), build_tiny_tokenizer(list(corpus))
    assert first.get_vocab() == second.get_vocab()
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()


def test_deterministic_across_processes(tokenizer):
    """A restarted run rebuilds exactly the same tokenizer (Rust hash maps must not leak into merges)."""
    script = (
        "import hashlib, sys; sys.path.insert(0, 'tests/model'); from conftest import sample_corpus; "
        "from model import get_preset, load_tokenizer; "
        "t = load_tokenizer(get_preset('tiny'), corpus=sample_corpus()); "
        "print(hashlib.sha256(t.backend_tokenizer.to_str().encode()).hexdigest())"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, check=True
    )
    here = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()
    assert result.stdout.strip().splitlines()[-1] == here


@pytest.mark.parametrize("text", TEXTS)
def test_exact_round_trip(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_special_tokens(tokenizer):
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert tokenizer(IMAGE_TOKEN * 3)["input_ids"] == [image_id] * 3
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.eos_token == "<|endoftext|>"
    assert IMAGE_TOKEN not in tokenizer.decode(
        tokenizer("a <image> b")["input_ids"], skip_special_tokens=True
    )
    assert len(tokenizer) <= 1024


def test_load_tokenizer_for_real_preset_uses_the_hub_id(monkeypatch, tokenizer):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    # Like phi-2's: an end-of-text token, but neither <image> nor a pad token; load_tokenizer adds both.
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False)
    backend.train_from_iterator(["hello world"], trainer=trainer)
    stand_in = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")
    assert stand_in.pad_token is None and IMAGE_TOKEN not in stand_in.get_vocab()
    calls = []

    def fake_from_pretrained(name, *args, **kwargs):
        calls.append(name)
        return stand_in

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", fake_from_pretrained)
    loaded = load_tokenizer(get_preset("tinygptv-phi2"))
    assert calls == ["microsoft/phi-2"]
    assert loaded.pad_token is not None and loaded.pad_token_id != loaded.eos_token_id
    image_id = loaded.convert_tokens_to_ids(IMAGE_TOKEN)
    assert loaded("a<image>b")["input_ids"].count(image_id) == 1
