"""EIM's semantic-transform loss: per-sample pooling in packed and padded batches, and its InfoNCE."""

import pytest
import torch

from model.losses import segment_means, semantic_transform_loss

IMG = 7  # image token id in these hand-built batches
PAD = 0


def sample(image_vec: torch.Tensor, text_vecs: list[torch.Tensor], ids: list[int]):
    """Two image tokens carrying `image_vec`, then text tokens with the given ids and embeddings."""
    return [IMG, IMG, *ids], [image_vec, image_vec, *text_vecs]


def make_samples(n: int, dim: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        text = [torch.randn(dim, generator=g) for _ in range(3)]
        mean = torch.stack(text).mean(0)
        out.append(sample(mean + 0.01 * torch.randn(dim, generator=g), text, [10 + i, 11, 12]))
    return out


def packed(samples, length: int):
    ids = torch.full((1, length), PAD)
    seg = torch.zeros((1, length), dtype=torch.long)
    emb = torch.zeros((1, length, samples[0][1][0].shape[0]))
    pos = 0
    for k, (i, e) in enumerate(samples, start=1):
        ids[0, pos : pos + len(i)] = torch.tensor(i)
        seg[0, pos : pos + len(i)] = k
        emb[0, pos : pos + len(i)] = torch.stack(e)
        pos += len(i)
    return ids, seg, emb


def padded(samples, length: int):
    ids = torch.full((len(samples), length), PAD)
    mask = torch.zeros((len(samples), length), dtype=torch.long)
    emb = torch.zeros((len(samples), length, samples[0][1][0].shape[0]))
    for r, (i, e) in enumerate(samples):  # left padding, as for generation prompts
        ids[r, length - len(i) :] = torch.tensor(i)
        mask[r, length - len(i) :] = 1
        emb[r, length - len(i) :] = torch.stack(e)
    return ids, mask, emb


def test_segment_means_groups_by_key():
    values = torch.arange(12, dtype=torch.float32).view(1, 6, 2)
    keys = torch.tensor([[0, 1, 1, 2, 2, 2]])
    means, counts = segment_means(values, keys, keys > 0, 3)
    assert counts.tolist() == [0, 2, 3]
    assert means[1].tolist() == [3.0, 4.0] and means[2].tolist() == [8.0, 9.0]


def test_packed_and_padded_batches_give_the_same_loss():
    samples = make_samples(5)
    ids, seg, emb = packed(samples, 40)
    loss_packed, n_packed = semantic_transform_loss(emb, ids, IMG, segment_ids=seg)
    ids, mask, emb = padded(samples, 9)
    loss_padded, n_padded = semantic_transform_loss(emb, ids, IMG, attention_mask=mask)
    assert n_packed == n_padded == 5
    torch.testing.assert_close(loss_packed, loss_padded)


def test_matched_pairs_score_low_and_shuffled_pairs_high():
    samples = make_samples(8)
    ids, seg, emb = packed(samples, 60)
    matched, _ = semantic_transform_loss(emb, ids, IMG, segment_ids=seg)
    # give every sample the next sample's image
    images = [s[1][0] for s in samples]
    rolled = [sample(images[(i + 1) % 8], s[1][2:], s[0][2:]) for i, s in enumerate(samples)]
    ids, seg, emb = packed(rolled, 60)
    shuffled, _ = semantic_transform_loss(emb, ids, IMG, segment_ids=seg)
    assert matched < 0.1 < torch.log(torch.tensor(8.0)) < shuffled


def test_gradient_reaches_image_positions_only_within_samples():
    samples = make_samples(4)
    ids, seg, emb = packed(samples, 30)
    emb.requires_grad_(True)
    loss, n = semantic_transform_loss(emb, ids, IMG, segment_ids=seg, temperature=0.5)
    loss.backward()
    assert n == 4
    assert emb.grad[0, seg[0] == 0].abs().sum() == 0  # padding takes no part
    assert emb.grad[0, ids[0] == IMG].abs().sum() > 0


@pytest.mark.parametrize("count", [0, 1])
def test_fewer_than_two_samples_give_zero_with_a_graph(count):
    samples = make_samples(count) if count else []
    ids, seg, emb = (
        packed(samples, 10)
        if samples
        else (torch.full((1, 4), PAD), torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, 16))
    )
    emb.requires_grad_(True)
    loss, n = semantic_transform_loss(emb, ids, IMG, segment_ids=seg)
    assert n == count and loss.item() == 0.0
    loss.backward()  # a zero with a graph, so a training step with no pairs still runs


def test_text_only_samples_take_no_part():
    samples = make_samples(3)
    text_only = ([20, 21], [torch.randn(16), torch.randn(16)])
    ids, seg, emb = packed(samples + [text_only], 30)
    _, n = semantic_transform_loss(emb, ids, IMG, segment_ids=seg)
    assert n == 3
