"""The mixture stream: exact shares, determinism, resume, rank disjointness, batch semantics."""

from collections import Counter

import pytest

from tasks.data.mixture import MixtureSampler

WEIGHTS = [50, 30, 80, 10, 0.5]
SIZES = [40, 7, 1000, 3, 11]


def test_realized_shares_within_one_point_over_20000_draws():
    sampler = MixtureSampler(WEIGHTS, SIZES, seed=42)
    counts = Counter(ref.dataset for ref in sampler.take(20_000))
    total = sum(WEIGHTS)
    for i, w in enumerate(WEIGHTS):
        assert abs(counts[i] / 20_000 - w / total) < 0.01, (i, counts[i])
    # stratified blocks are tighter than a percentage point: within two samples per block
    assert abs(counts[4] - 20_000 * 0.5 / total) <= 2


def test_same_seed_same_stream_other_seed_other_stream():
    a = MixtureSampler(WEIGHTS, SIZES, seed=1).take(500)
    b = MixtureSampler(WEIGHTS, SIZES, seed=1).take(500)
    c = MixtureSampler(WEIGHTS, SIZES, seed=2).take(500)
    assert a == b
    assert a != c


def test_restored_iterator_continues_the_same_stream():
    full = MixtureSampler(WEIGHTS, SIZES, seed=3).take(1500)
    first = MixtureSampler(WEIGHTS, SIZES, seed=3)
    first.take(777)
    state = first.state_dict()
    resumed = MixtureSampler(WEIGHTS, SIZES, seed=3)
    resumed.load_state_dict(state)
    assert resumed.take(723) == full[777:]


def test_state_from_another_mixture_is_refused():
    state = MixtureSampler(WEIGHTS, SIZES, seed=3).state_dict()
    with pytest.raises(ValueError, match="different mixture"):
        MixtureSampler(WEIGHTS, [1, 2, 3, 4, 5], seed=3).load_state_dict(state)


def test_every_example_once_per_epoch():
    sampler = MixtureSampler([1, 1], [5, 500], seed=0)
    small = [r.example for r in sampler.take(2000) if r.dataset == 0]
    for epoch in range(len(small) // 5):
        assert sorted(small[epoch * 5 : epoch * 5 + 5]) == [0, 1, 2, 3, 4]


def test_ranks_get_disjoint_draws_that_cover_the_stream():
    world = [MixtureSampler(WEIGHTS, SIZES, seed=5, rank=r, world_size=3).take(100) for r in range(3)]
    single = MixtureSampler(WEIGHTS, SIZES, seed=5).take(300)
    draws = sorted(ref.draw for refs in world for ref in refs)
    assert draws == list(range(300))
    merged = sorted((ref for refs in world for ref in refs), key=lambda r: r.draw)
    assert merged == single


def test_batch_semantics_reproduce_the_original_per_example_shares():
    # original code: dataset chosen per batch with p = ratio; per-example share = ratio x batch size
    sampler = MixtureSampler([40, 25], [100, 100], seed=0, semantics="batches", batch_sizes=[3, 1])
    counts = Counter(r.dataset for r in sampler.take(20_000))
    expected = 40 * 3 / (40 * 3 + 25)
    assert abs(counts[0] / 20_000 - expected) < 0.015
    assert sampler.shares[0] == pytest.approx(expected)
    # draws come in whole batches: runs of dataset 0 have lengths that are multiples of 3
    refs = MixtureSampler([40, 25], [100, 100], seed=0, semantics="batches", batch_sizes=[3, 1]).take(255)
    run, runs = 0, []
    for prev, cur in zip(refs, refs[1:], strict=False):
        run += prev.dataset == 0
        if prev.dataset == 0 and cur.dataset != 0:
            runs.append(run)
            run = 0
    assert runs and all(r % 3 == 0 for r in runs)


def test_empty_dataset_is_an_error():
    with pytest.raises(ValueError, match="no examples"):
        MixtureSampler([1, 1], [3, 0], seed=0)
