"""`sft_jax.data.packing`: packed and padded batches share one contract and one loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sft_jax.data import packing
from sft_jax.data.pipeline import TrainIterator, bucket_lengths
from sft_jax.errors import UserInputError
from sft_jax.models import layers

PAD = 0


def make_examples(lengths, seed=0, vocab=50):
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        mask = (rng.random(n) < 0.6).astype(np.int32)  # mask[0] may be 1: never a target
        out.append({"input_ids": rng.integers(1, vocab, n).astype(np.int32), "loss_mask": mask})
    return out


def segments_of(batch):
    """Every (input_ids, loss_mask, positions) segment in a contract batch, row by row."""
    out = []
    for r in range(batch["input_ids"].shape[0]):
        seg = batch["segment_ids"][r]
        for s in range(1, int(seg.max()) + 1):
            where = np.flatnonzero(seg == s)
            assert np.array_equal(where, np.arange(where[0], where[-1] + 1))  # contiguous
            out.append((batch["input_ids"][r, where], batch["loss_mask"][r, where],
                        batch["positions"][r, where]))
    return out


def check_contract(batch, examples):
    assert set(batch) == set(packing.FIELDS)
    assert all(v.dtype == np.int32 and v.shape == batch["input_ids"].shape
               for v in batch.values())
    pad = batch["segment_ids"] == 0
    assert (batch["input_ids"][pad] == PAD).all() and not batch["loss_mask"][pad].any()
    assert not batch["positions"][pad].any()
    segs = segments_of(batch)
    for _, _, positions in segs:
        np.testing.assert_array_equal(positions, np.arange(len(positions)))
    got = sorted((ids.tolist(), m.tolist()) for ids, m, _ in segs)
    want = sorted((ex["input_ids"].tolist(), ex["loss_mask"].tolist()) for ex in examples)
    assert got == want  # every example exactly once, intact


def test_first_fit_decreasing_packs_tightly():
    examples = make_examples([5, 3, 7, 2, 6, 4])
    batch = packing.pack_examples(examples, length=10, pad_id=PAD)
    check_contract(batch, examples)
    # 7,6,5,4,3,2 first-fit: [7,3] [6,4] [5,2]
    lengths = [[len(ids) for ids, _, _ in segments_of({k: v[r:r + 1] for k, v in batch.items()})]
               for r in range(3)]
    assert lengths == [[7, 3], [6, 4], [5, 2]]
    assert batch["segment_ids"][2].tolist() == [1] * 5 + [2] * 2 + [0] * 3


def test_sequential_packing_keeps_the_order():
    examples = make_examples([5, 3, 7, 2, 6, 4])
    batch = packing.pack_examples(examples, length=10, strategy="sequential", pad_id=PAD)
    check_contract(batch, examples)
    firsts = [ids[0] for ids, _, _ in segments_of(batch)]
    assert firsts == [ex["input_ids"][0] for ex in examples]
    assert batch["input_ids"].shape == (3, 10)


def test_first_fit_matches_a_naive_first_fit():
    lengths = np.random.default_rng(3).integers(1, 33, 300).tolist()
    rooms, naive = [], []
    for n in lengths:
        r = next((i for i, room in enumerate(rooms) if room >= n), len(rooms))
        if r == len(rooms):
            rooms.append(32)
        rooms[r] -= n
        naive.append(r)
    assert packing._first_fit(lengths, 32) == naive


def test_pad_examples_one_segment_per_row():
    examples = make_examples([5, 9, 2])
    batch = packing.pad_examples(examples, buckets=[4, 8, 16], pad_id=PAD, batch_size=4)
    assert batch["input_ids"].shape == (4, 16)
    check_contract(batch, examples)
    assert batch["segment_ids"].max(axis=1).tolist() == [1, 1, 1, 0]
    with pytest.raises(UserInputError, match="example 1 has 9 tokens, more than the last"):
        packing.pad_examples(examples, buckets=[4, 8])
    with pytest.raises(UserInputError, match="more than the pack length 8"):
        packing.pack_examples(examples, length=8)
    with pytest.raises(UserInputError, match="strategy 'best'"):
        packing.pack_examples(examples, length=16, strategy="best")


def test_next_token_targets_stop_at_segment_boundaries():
    ids = np.array([[11, 12, 13, 21, 22, PAD]], np.int32)
    seg = np.array([[1, 1, 1, 2, 2, 0]], np.int32)
    mask = np.array([[1, 1, 1, 1, 1, 1]], np.int32)
    targets, weights = packing.next_token_targets(ids, seg, mask)
    assert targets.tolist() == [[12, 13, 0, 22, 0, 0]]
    assert weights.tolist() == [[1, 1, 0, 1, 0, 0]]  # 13 → 21 crosses segments
    _, weights = packing.next_token_targets(ids, seg, np.array([[0, 0, 1, 0, 0, 1]], np.int32))
    assert weights.tolist() == [[0, 1, 0, 0, 0, 0]]
    assert weights.dtype == jnp.float32 and targets.dtype == jnp.int32


def test_padding_stats():
    examples = make_examples([5, 3, 7, 2, 6, 4])
    padded = packing.pad_examples(examples, buckets=[8], pad_id=PAD)
    packed = packing.pack_examples(examples, length=10, pad_id=PAD)
    assert packing.padding_stats([padded]) == {"real_tokens": 27, "padded_tokens": 21,
                                               "waste": 21 / 48}
    assert packing.padding_stats([packed])["padded_tokens"] == 3
    assert packing.padding_stats(packing.as_rows(packed))["real_tokens"] == 27


@jax.jit
def tiny_lm_losses(params, batch):
    """A segment-aware causal LM (embeddings, one attention layer) → summed loss, weight."""
    ids, pos, seg = batch["input_ids"], batch["positions"], batch["segment_ids"]
    x = params["embed"][ids] + params["pos"][pos]  # B L D
    q, k, v = (jnp.einsum("BLD,DNH->BLNH", x, params[n]) for n in ("q", "k", "v"))
    mask = layers.combine_masks(layers.causal_mask(ids.shape[1]), layers.segment_mask(seg))
    h = layers.dot_product_attention(q, k, v, mask=mask)  # B L N H
    logits = jnp.einsum("BLNH,NHV->BLV", h, params["out"])
    targets, weights = packing.next_token_targets(ids, seg, batch["loss_mask"])
    logp = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * weights), jnp.sum(weights)


def test_packed_and_padded_batches_give_the_same_loss():
    examples = make_examples([5, 3, 7, 2, 6, 4, 9, 1, 8])
    rng = np.random.default_rng(0)
    normal = lambda *shape: rng.normal(size=shape).astype(np.float32)
    params = {"embed": normal(50, 8), "pos": normal(16, 8), "q": normal(8, 2, 4),
              "k": normal(8, 2, 4), "v": normal(8, 2, 4), "out": normal(2, 4, 50)}
    packed = packing.pack_examples(examples, length=16, pad_id=PAD)
    padded = packing.pad_examples(examples, buckets=[16], pad_id=PAD)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]
    loss_packed, weight_packed = tiny_lm_losses(params, packed)
    loss_padded, weight_padded = tiny_lm_losses(params, padded)
    shuffled = packing.pack_examples(examples[::-1], length=16, strategy="sequential")
    np.testing.assert_allclose(float(tiny_lm_losses(params, shuffled)[0]),
                               float(loss_packed), rtol=1e-5)
    assert float(weight_packed) == float(weight_padded) == sum(
        int(ex["loss_mask"][1:].sum()) for ex in examples)
    np.testing.assert_allclose(float(loss_packed), float(loss_padded), rtol=1e-5)


def test_packed_rows_feed_the_train_iterator_and_resume_exactly():
    examples = make_examples(np.random.default_rng(1).integers(2, 12, 40).tolist())
    packed = packing.pack_examples(examples, length=16, pad_id=PAD)
    again = packing.pack_examples(examples, length=16, pad_id=PAD)  # deterministic
    assert all(np.array_equal(packed[k], again[k]) for k in packing.FIELDS)
    rows = packing.as_rows(packed)

    def iterator():
        return TrainIterator(rows, global_batch_size=4, seed=3, buckets=[16],
                             pad_values=packing.pad_values(PAD))

    it = iterator()
    first = next(it)
    assert {k: v.shape for k, v in first.items()} == {
        **{k: (4, 16) for k in packing.FIELDS}, "example_mask": (4,)}
    state = it.get_state()
    expected = [next(it) for _ in range(it.steps_per_epoch + 1)]  # across an epoch boundary
    resumed = iterator()
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        assert all(np.array_equal(got[k], want[k]) for k in want)


def test_single_segment_rows_feed_the_train_iterator_with_buckets():
    examples = make_examples([3, 5, 20, 7, 2, 30, 4, 6])
    it = TrainIterator([packing.single_segment(ex) for ex in examples], global_batch_size=8,
                       seed=0, buckets=bucket_lengths(32, 8), pad_values=packing.pad_values(PAD))
    batch = next(it)
    assert batch["input_ids"].shape == (8, 32)
    check_contract({k: batch[k] for k in packing.FIELDS}, examples)
    assert batch["segment_ids"].max(axis=1).tolist() == [1] * 8
