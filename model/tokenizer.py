"""Tokenizers: a small byte-level BPE trained on the fly for the tiny preset, or the real Phi tokenizer.

Both gain the `<image>` placeholder (one per query token after expansion) and a distinct pad token,
so padding can never be confused with end-of-text in labels or stopping rules.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from .presets import TINY_TOKENIZER, ModelPreset

IMAGE_TOKEN = "<image>"
EOS_TOKEN = "<|endoftext|>"  # phi-2's end-of-text, reused so prompts look the same for both tokenizers
PAD_TOKEN = "<pad>"
# Label value of a position that is not a target (prompt, image, pad): the loss skips it.
IGNORE_INDEX = -100


def build_tiny_tokenizer(corpus: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `corpus` and wrap it as a transformers fast tokenizer.

    Byte-level pre-tokenisation makes decode(encode(text)) == text for any text; the Rust trainer
    breaks count ties by pair order, so the same corpus gives the same vocabulary every run.
    """
    special = [EOS_TOKEN, PAD_TOKEN, IMAGE_TOKEN]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        # All 256 byte symbols up front: unseen characters still encode (no <unk> ever).
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(corpus), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[IMAGE_TOKEN],
        # The default clean-up rewrites " ." to "." on decode, which would break exact round trips.
        clean_up_tokenization_spaces=False,
        padding_side="right",
    )


def add_vlm_special_tokens(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Add `<image>` (and a pad token when missing) to a pretrained tokenizer, in place."""
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens(
            {"extra_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False
        )
    return tokenizer


def load_tokenizer(preset: ModelPreset, corpus: Iterable[str] | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer a preset trains with: the built-in tiny BPE trained on `corpus` (the caller's
    text: the tiny preset's words come from the data, e.g. tasks.shapes_world.tokenizer_corpus), or
    the hub tokenizer plus our tokens (`corpus` is then unused)."""
    if preset.has_tiny_tokenizer:
        if corpus is None:
            raise ValueError(
                f"preset {preset.name!r} uses the built-in {TINY_TOKENIZER} tokenizer, which is trained "
                "on a corpus: pass corpus= (tasks.shapes_world.tokenizer_corpus() for the shapes world)"
            )
        return build_tiny_tokenizer(corpus)
    tokenizer = AutoTokenizer.from_pretrained(preset.tokenizer)
    return add_vlm_special_tokens(tokenizer)


def image_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """Id of `<image>`; fails loudly if the tokenizer was not prepared by this module."""
    token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(
            f"tokenizer has no {IMAGE_TOKEN} token; build it with model.tokenizer.load_tokenizer"
        )
    return int(token_id)


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id rows are padded with: the pad token, or end-of-text for a tokenizer without one."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
