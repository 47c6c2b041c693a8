"""Caption metrics as the COCO caption evaluation code computes them: BLEU-1..4 (corpus level,
"closest" reference length for the brevity penalty) and CIDEr-D (n = 1..4, document frequencies from
the references, tf-idf counts of the candidate clipped by the reference's, Gaussian length penalty with
sigma = 6, times 10), on text tokenised by a Python stand-in for the PTB tokenizer.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

MAX_N = 4
SIGMA = 6.0
_TINY, _SMALL = 1e-15, 1e-9  # the BLEU scorer's guards against a zero count or length
# tokens the COCO tokenizer wrapper drops after PTB tokenisation
_PUNCT_TOKENS = frozenset(
    ["'", "''", "`", "``", "(", ")", "[", "]", "{", "}", ".", "?", "!", ",", ":", "-", "--", "...", ";", '"']
)
_CLITIC_NT = re.compile(r"(\w)n't\b")
_CLITIC = re.compile(r"(\w)'(s|re|ve|ll|d|m)\b")
_TOKEN = re.compile(r"n't|'(?:s|re|ve|ll|d|m)\b|[^\W_]+(?:[-.,/'&][^\W_]+)*|\.\.\.|--|\S")


def ptb_tokenize(text: str) -> list[str]:
    """Lowercased PTB-style tokens (clitics split off: "don't" -> do n't, "dog's" -> dog 's) without
    the punctuation tokens the COCO code removes; hyphenated words and numbers like 3.5 stay whole."""
    text = text.lower().replace("\n", " ").replace("\t", " ")
    text = _CLITIC.sub(r"\1 '\2", _CLITIC_NT.sub(r"\1 n't", text))
    return [t for t in _TOKEN.findall(text) if t not in _PUNCT_TOKENS]


def _ngrams(tokens: Sequence[str], n_max: int = MAX_N) -> Counter:
    counts: Counter = Counter()
    for n in range(1, n_max + 1):
        for i in range(len(tokens) - n + 1):
            counts[tuple(tokens[i : i + n])] += 1
    return counts


def corpus_bleu(
    candidates: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]]
) -> list[float]:
    """[BLEU-1, ..., BLEU-4] of tokenised candidates, each against its list of tokenised references."""
    guess, correct = [0] * MAX_N, [0] * MAX_N
    test_total = ref_total = 0
    for cand, refs in zip(candidates, references, strict=True):
        max_ref: Counter = Counter()
        for ref in refs:
            for gram, c in _ngrams(ref).items():
                max_ref[gram] = max(max_ref[gram], c)
        test_len = len(cand)
        # closest reference length, the shorter one on a tie
        ref_len = min((abs(len(r) - test_len), len(r)) for r in refs)[1] if refs else 0
        test_total += test_len
        ref_total += ref_len
        for k in range(MAX_N):
            guess[k] += max(0, test_len - k)
        for gram, c in _ngrams(cand).items():
            correct[len(gram) - 1] += min(c, max_ref[gram])
    ratio = (test_total + _TINY) / (ref_total + _SMALL)
    penalty = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
    scores, product = [], 1.0
    for k in range(MAX_N):
        product *= (correct[k] + _TINY) / (guess[k] + _SMALL)
        scores.append(product ** (1 / (k + 1)) * penalty)
    return scores


def _tfidf(counts: Counter, doc_freq: Counter, log_docs: float) -> tuple[list[dict], list[float], int]:
    vec: list[dict] = [{} for _ in range(MAX_N)]
    norm = [0.0] * MAX_N
    length = 0
    for gram, tf in counts.items():
        n = len(gram) - 1
        weight = tf * (log_docs - math.log(max(1.0, doc_freq[gram])))
        vec[n][gram] = weight
        norm[n] += weight * weight
        if n == 1:  # the reference code measures length in bigrams
            length += tf
    return vec, [math.sqrt(v) for v in norm], length


def cider_d_scores(
    candidates: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]]
) -> list[float]:
    """CIDEr-D of each tokenised candidate against its tokenised references (the corpus is the list)."""
    ref_counts = [[_ngrams(r) for r in refs] for refs in references]
    doc_freq: Counter = Counter()
    for refs in ref_counts:
        doc_freq.update({gram for counts in refs for gram in counts})
    log_docs = math.log(len(references)) if references else 0.0
    scores = []
    for cand, refs in zip(candidates, ref_counts, strict=True):
        vec, norm, length = _tfidf(_ngrams(cand), doc_freq, log_docs)
        total = [0.0] * MAX_N
        for counts in refs:
            rvec, rnorm, rlength = _tfidf(counts, doc_freq, log_docs)
            penalty = math.exp(-((length - rlength) ** 2) / (2 * SIGMA**2))
            for n in range(MAX_N):
                val = sum(min(w, rvec[n].get(g, 0.0)) * rvec[n].get(g, 0.0) for g, w in vec[n].items())
                if norm[n] and rnorm[n]:
                    val /= norm[n] * rnorm[n]
                total[n] += val * penalty
        scores.append(sum(total) / MAX_N / max(len(refs), 1) * 10.0)
    return scores


def caption_scores(
    predictions: Sequence[str | None], references: Sequence[Sequence[str]]
) -> dict[str, float]:
    """bleu_1..bleu_4 and cider_d of raw caption strings (tokenised here) against raw references."""
    cands = [ptb_tokenize(p or "") for p in predictions]
    refs = [[ptb_tokenize(r) for r in rs] for rs in references]
    out = {f"bleu_{k + 1}": v for k, v in enumerate(corpus_bleu(cands, refs))}
    cider = cider_d_scores(cands, refs)
    out["cider_d"] = sum(cider) / len(cider) if cider else 0.0
    return out
