"""BLEU and CIDEr-D as the COCO caption code computes them, on corpora small enough to work out by hand."""

from __future__ import annotations

import math

import pytest

from tasks.evaluate.official import BENCHMARKS, Item
from tasks.evaluate.official.caption_metrics import caption_scores, cider_d_scores, corpus_bleu, ptb_tokenize


def toks(*sentences: str) -> list[list[str]]:
    return [s.split() for s in sentences]


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("A man's dog, running.", ["a", "man", "'s", "dog", "running"]),
        ("Don't stop!", ["do", "n't", "stop"]),
        ("a t-shirt (red)", ["a", "t-shirt", "red"]),
        ('3.5 "apples"; ok...', ["3.5", "apples", "ok"]),
    ],
)
def test_ptb_style_tokens(text, tokens):
    assert ptb_tokenize(text) == tokens


def test_bleu_of_an_identical_candidate_is_one():
    bleu = corpus_bleu(toks("a man rides a red bike"), [toks("a man rides a red bike")])
    assert bleu == pytest.approx([1.0, 1.0, 1.0, 1.0], abs=1e-8)


def test_bleu_without_a_shared_ngram_is_zero():
    bleu = corpus_bleu(toks("dogs bark loudly outside"), [toks("a cat sleeps inside", "the kitten naps")])
    assert bleu == pytest.approx([0.0] * 4, abs=1e-8)


def test_bleu_clipped_precisions_by_hand():
    # candidate: the cat sat on the mat / reference: the cat is on the mat (both 6 words: no penalty)
    # unigrams: the x2 (reference has 2), cat, on, mat match; sat does not -> 5/6
    # bigrams: "the cat", "on the", "the mat" of 5 -> 3/5; trigrams: "on the mat" of 4 -> 1/4; 4-grams 0/3
    bleu = corpus_bleu(toks("the cat sat on the mat"), [toks("the cat is on the mat")])
    assert bleu[0] == pytest.approx(5 / 6)
    assert bleu[1] == pytest.approx(math.sqrt(5 / 6 * 3 / 5))
    assert bleu[2] == pytest.approx((5 / 6 * 3 / 5 * 1 / 4) ** (1 / 3))  # = 0.125 ** (1/3) = 0.5
    assert bleu[2] == pytest.approx(0.5)
    assert bleu[3] == pytest.approx(0.0, abs=1e-3)


def test_bleu_brevity_penalty_uses_the_closest_reference():
    # 4 words against references of 6 and 8: closest is 6, ratio 4/6, penalty exp(1 - 6/4) = exp(-0.5)
    bleu = corpus_bleu(toks("a b c d"), [toks("a b c d e f", "a b c d e f g h")])
    assert bleu[3] == pytest.approx(math.exp(-0.5))
    # 5 words against 4 and 6: a tie, the shorter reference (4) wins -> no penalty
    bleu = corpus_bleu(toks("a b c d e"), [toks("a b c d", "a b c d e f")])
    assert bleu[3] == pytest.approx(1.0, abs=1e-8)


def test_bleu_is_corpus_level():
    # counts are summed before dividing: unigrams (4+2)/8, bigrams (3+1)/6, trigrams (2+0)/4, 4-grams (1+0)/2
    bleu = corpus_bleu(toks("a b c d", "e f g h"), [toks("a b c d"), toks("e f x y")])
    assert bleu[3] == pytest.approx((6 / 8 * 4 / 6 * 2 / 4 * 1 / 2) ** 0.25)


def test_cider_d_identical_candidates_with_distinct_ngrams_score_ten():
    # each n-gram occurs in one of the 2 images: idf = log(2) - log(1); cosine 1 for n = 1..4 -> mean 1 -> x10
    scores = cider_d_scores(
        toks("a man rides a bike", "two cats sleep on sofa"),
        [toks("a man rides a bike"), toks("two cats sleep on sofa")],
    )
    assert scores == pytest.approx([10.0, 10.0])


def test_cider_d_without_a_shared_ngram_is_zero():
    scores = cider_d_scores(
        toks("dogs bark loudly outside", "two cats sleep here"),
        [toks("a cat sleeps inside"), toks("two cats sleep here")],
    )
    assert scores[0] == 0.0 and scores[1] == pytest.approx(10.0)


def test_cider_d_ngrams_in_every_image_weigh_nothing():
    # "a cat" appears in both images' references: idf log(2) - log(2) = 0 for every n-gram -> 0
    assert cider_d_scores(toks("a cat", "a cat"), [toks("a cat"), toks("a cat")]) == [0.0, 0.0]


def test_cider_d_short_candidate_and_length_penalty_by_hand():
    # image 1: candidate "x y x", reference "x y"; image 2 matches its reference exactly. w = log 2.
    # unigrams: candidate x:2w, y:w; reference x:w, y:w; clipped dot = min(2w,w)w + w*w = 2w^2;
    #   norms sqrt(5)w and sqrt(2)w -> 2/sqrt(10)
    # bigrams: candidate "x y":w, "y x":w (unseen in references: idf log 2 - log 1); reference "x y":w
    #   -> w^2 / (sqrt(2)w * w) = 1/sqrt(2)
    # trigrams: the reference has none -> 0; 4-grams: none -> 0
    # length in bigrams: 2 vs 1 -> penalty exp(-1 / (2 * 36))
    expected = 10 * (2 / math.sqrt(10) + 1 / math.sqrt(2)) / 4 * math.exp(-1 / 72)
    scores = cider_d_scores(toks("x y x", "p q r s"), [toks("x y"), toks("p q r s")])
    assert scores[0] == pytest.approx(expected)
    # a 2-word exact match scores only the unigram and bigram cosines: (1 + 1 + 0 + 0) / 4 * 10 = 5
    assert cider_d_scores(toks("x y", "p q r s"), [toks("x y"), toks("p q r s")])[0] == pytest.approx(5.0)


def test_cider_d_averages_over_references():
    # image 1 has two references: the candidate equals one (cosine 1 each n) and shares nothing with the other
    # -> (10 + 0) / 2 = 5; image 2 is exact -> 10
    scores = cider_d_scores(
        toks("a man rides a bike", "two cats sleep on sofa"),
        [toks("a man rides a bike", "green trees grow tall"), toks("two cats sleep on sofa")],
    )
    assert scores == pytest.approx([5.0, 10.0])


def test_caption_scores_tokenise_raw_text():
    scores = caption_scores(
        ["A man rides a bike.", "Two cats sleep on a sofa!"],
        [["a man rides a bike"], ["two cats sleep on a sofa"]],
    )
    assert scores["bleu_4"] == pytest.approx(1.0, abs=1e-8)
    # "a" is in both images' references, so its weight is 0; everything else matches -> 10
    assert scores["cider_d"] == pytest.approx(10.0)


def test_coco_benchmark_scores_and_names_the_absent_java_metrics(monkeypatch):
    bench = BENCHMARKS["coco_caption"]
    items = [Item("1", None, "", None, ["a dog runs on grass"]), Item("2", None, "", None, ["a red bus"])]
    scores = bench.score(items, ["a dog runs on grass", None])
    assert set(scores) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider_d", "n"}
    assert scores["cider_d"] == pytest.approx(5.0)  # 10 for the first image, 0 for the missing caption
    import tasks.evaluate.official.base as base

    monkeypatch.setattr(base.shutil, "which", lambda name: None)
    absent = bench.unavailable()
    assert set(absent) == {"meteor", "spice"} and "java is not on PATH" in absent["meteor"]
    monkeypatch.setattr(base.shutil, "which", lambda name: "/usr/bin/java")
    assert "does not ship" in bench.unavailable()["spice"]
