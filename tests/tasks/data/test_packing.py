"""Packing layout: segment ids, labels only on answers, nothing dropped, efficiency."""

from model.tokenizer import IGNORE_INDEX
from tasks.data.packing import EncodedSample, Packer, collate


def sample(n: int, answer: int, dataset: int = 0, image=None) -> EncodedSample:
    ids = list(range(1, n + 1))
    labels = [IGNORE_INDEX] * (n - answer) + ids[n - answer :]
    return EncodedSample(ids, labels, image=image, dataset=dataset)


def test_collate_marks_segments_and_pads():
    batch = collate([[sample(3, 1), sample(2, 1, image="a")], [sample(4, 2, image="b")]], pad_id=0, length=6)
    assert batch.segment_ids.tolist() == [[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 0, 0]]
    assert batch.labels.tolist()[0] == [IGNORE_INDEX, IGNORE_INDEX, 3, IGNORE_INDEX, 2, IGNORE_INDEX]
    assert batch.images == ["a", "b"]
    assert batch.real_tokens == 9 and batch.capacity == 12


def test_packer_drops_and_duplicates_nothing():
    stream = iter([sample(n, 1, dataset=i) for i, n in enumerate([5, 9, 3, 7, 6, 2, 8, 4] * 200)])
    packer = Packer(rows=2, max_len=16, pad_id=0)
    seen = []
    for _ in range(20):
        batch = packer.next_batch(lambda: next(stream))
        assert batch.input_ids.shape == (2, 16)
        seen += batch.datasets
    seen += [s.dataset for s in packer.carry]
    # nothing dropped, nothing duplicated
    assert len(seen) == len(set(seen))
    assert set(seen) == set(range(len(seen)))


def test_packing_efficiency_is_high_and_padding_baseline_low():
    lengths = [20, 35, 28, 40, 22, 31, 25, 38, 27, 33] * 50

    def efficiency(packing: bool) -> float:
        stream = iter(sample(n, 5) for n in lengths)
        packer = Packer(rows=4, max_len=192, pad_id=0, packing=packing)
        real = cap = 0
        for _ in range(10):
            batch = packer.next_batch(lambda: next(stream))
            real, cap = real + batch.real_tokens, cap + batch.capacity
        return real / cap

    assert efficiency(True) >= 0.97
    assert efficiency(False) < 0.85


def test_piece_cache_gives_the_tokenizers_own_ids():
    """Cached pieces must equal a fresh tokenisation, also after the table fills and is cleared."""
    from model.presets import get_preset
    from model.tokenizer import load_tokenizer
    from tasks.data import packing
    from tasks.shapes_world import tokenizer_corpus

    tok = load_tokenizer(get_preset("tiny"), corpus=tokenizer_corpus())
    pieces = ["###Human: <Img>", "</Img> [vqa] is there a red square? ###Assistant: ", "no###", "top left"]
    old = packing.PIECE_CACHE_SIZE
    packing.PIECE_CACHE_SIZE = 3
    try:
        for _ in range(3):
            for piece in pieces:
                assert (
                    packing._tokenize_piece(tok, piece) == tok(piece, add_special_tokens=False)["input_ids"]
                )
        assert len(packing._PIECE_CACHE[tok]) <= 3
    finally:
        packing.PIECE_CACHE_SIZE = old


def test_the_best_fill_picks_what_a_scan_of_every_pair_picks():
    """The pair search uses two pointers and a table; its choice must be the exhaustive scan's."""
    import random

    from tasks.data.packing import EncodedSample, Packer

    def scan(lengths: list[int], free: int) -> list[int]:
        fitting = [i for i, n in enumerate(lengths) if n <= free]
        if not fitting:
            return []
        best = max(fitting, key=lambda i: (lengths[i], -i))
        if any(lengths[i] <= free - lengths[best] for i in fitting if i != best):
            return [best]
        pair, pair_len = [best], lengths[best]
        for a in range(len(fitting)):
            for b in range(a + 1, len(fitting)):
                n = lengths[fitting[a]] + lengths[fitting[b]]
                if pair_len < n <= free:
                    pair, pair_len = [fitting[a], fitting[b]], n
        return pair

    rng = random.Random(0)
    for _ in range(3000):
        lengths = [rng.randint(1, 60) for _ in range(rng.randint(1, 40))]
        free = rng.randint(1, 130)
        pool = [EncodedSample([0] * n, [0] * n) for n in lengths]
        assert Packer._best_fill(pool, free) == scan(lengths, free), (lengths, free)
