"""Tests for sft_jax.data.pipeline: bucketing, padding, seeded sharded iteration, resume."""

import collections
import json

import numpy as np
import pytest

from sft_jax.data import pipeline
from sft_jax.data.pipeline import (
    TrainIterator,
    bucket_lengths,
    eval_batches,
    length_order,
    pad_batch,
)
from sft_jax.errors import UserInputError

N, G, BUCKETS, PAD = 37, 8, [4, 8, 16], {"input_ids": -1}


def make_features(n=N, seed=0):
    """Feature i: id i, input_ids of length 1..16 filled with i, attention_mask ones."""
    rng = np.random.default_rng(seed)
    feats = []
    for i in range(n):
        length = int(rng.integers(1, 17))
        feats.append({"input_ids": np.full(length, i, np.int64),
                      "attention_mask": np.ones(length, np.int64), "id": i})
    return feats


class LazyFeatures:
    """A Sequence-like view that builds features on access (like lazy tokenization)."""

    def __init__(self, feats):
        self.feats = feats

    def __len__(self):
        return len(self.feats)

    def __getitem__(self, i):
        return self.feats[i]


def ids(batch):
    return [int(i) for i, m in zip(batch["id"], batch["example_mask"], strict=True) if m]


def take(it, k):
    return [next(it) for _ in range(k)]


def train_iter(feats=None, **kw):
    kw = {"global_batch_size": G, "seed": 0, "buckets": BUCKETS, "pad_values": PAD} | kw
    return TrainIterator(make_features() if feats is None else feats, **kw)


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


# ------------------------------------------------------------------------------- buckets

def test_bucket_lengths():
    assert bucket_lengths(128) == [16, 32, 64, 128]
    assert bucket_lengths(100) == [16, 32, 64, 100]
    assert bucket_lengths(10) == [10]
    assert bucket_lengths(16) == [16]
    assert bucket_lengths(40, min_bucket=8) == [8, 16, 32, 40]
    assert bucket_lengths(40, min_bucket=12) == [16, 32, 40]
    assert bucket_lengths(512, explicit=[128, 512]) == [128, 512]


@pytest.mark.parametrize("explicit", [[], [64, 32, 128], [0, 128], [32, 64]])
def test_bucket_lengths_bad_explicit(explicit):
    with pytest.raises(UserInputError, match=r"^data\.buckets: "):
        bucket_lengths(128, explicit=explicit)


# --------------------------------------------------------------------------------- pad

def test_pad_batch_shapes_values_and_filler_rows():
    exs = [{"input_ids": np.array([5, 6, 7]), "attention_mask": np.array([1, 1, 1]), "label": 2},
           {"input_ids": np.array([8]), "attention_mask": np.array([1]), "label": 1}]
    b = pad_batch(exs, batch_size=4, buckets=[2, 4, 8], pad_values={"input_ids": 9})
    assert set(b) == {"input_ids", "attention_mask", "label", "example_mask"}
    assert b["input_ids"].dtype == np.int32 and b["input_ids"].shape == (4, 4)
    np.testing.assert_array_equal(b["input_ids"],
                                  [[5, 6, 7, 9], [8, 9, 9, 9], [9, 9, 9, 9], [9, 9, 9, 9]])
    np.testing.assert_array_equal(b["attention_mask"].sum(1), [3, 1, 0, 0])
    np.testing.assert_array_equal(b["label"], [2, 1, 0, 0])
    assert b["label"].dtype == np.int32
    np.testing.assert_array_equal(b["example_mask"], [1, 1, 0, 0])
    assert b["example_mask"].dtype == np.float32


def test_pad_batch_exact_bucket_and_too_long():
    ex = {"input_ids": np.arange(4)}
    assert pad_batch([ex], batch_size=1, buckets=[4, 8], pad_values={})["input_ids"].shape \
        == (1, 4)
    with pytest.raises(ValueError, match="exceeds the last bucket 8"):
        pad_batch([{"input_ids": np.arange(9)}], batch_size=1, buckets=[4, 8], pad_values={})


def test_pad_batch_per_field_buckets_and_floats():
    ex = {"inputs": np.arange(10), "targets": np.arange(3), "weights": np.ones(3, np.float32)}
    b = pad_batch([ex], batch_size=2,
                  buckets={"inputs": [8, 16], "targets": [4, 8], "weights": [4, 8]},
                  pad_values={})
    assert b["inputs"].shape == (2, 16) and b["targets"].shape == (2, 4)
    assert b["weights"].dtype == np.float32 and b["weights"].shape == (2, 4)


def test_pad_batch_all_filler_needs_like():
    like = {"input_ids": np.arange(3), "label": 1}
    b = pad_batch([], batch_size=2, buckets=[4, 8], pad_values={"input_ids": 7}, like=like)
    np.testing.assert_array_equal(b["input_ids"], np.full((2, 4), 7))
    np.testing.assert_array_equal(b["example_mask"], [0, 0])
    with pytest.raises(ValueError, match="like"):
        pad_batch([], batch_size=2, buckets=[4], pad_values={})


# ------------------------------------------------------------------------------- train

def test_static_shapes_from_bucket_set_and_dropped_remainder():
    it = train_iter()
    assert it.steps_per_epoch == pipeline.steps_per_epoch(N, G) == 4
    batches = take(it, 3 * 4)
    for b in batches:
        assert b["input_ids"].shape[0] == G and b["input_ids"].shape[1] in BUCKETS
        assert b["attention_mask"].shape == b["input_ids"].shape
        assert b["id"].shape == b["example_mask"].shape == (G,)
        assert b["example_mask"].all()
        for row, i, mask in zip(b["input_ids"], b["id"], b["attention_mask"], strict=True):
            np.testing.assert_array_equal(row[mask == 1], i)  # real tokens are the id
            assert (row[mask == 0] == -1).all()  # padding uses pad_values
    for e in range(3):
        epoch = [i for b in batches[4 * e: 4 * e + 4] for i in ids(b)]
        assert len(epoch) == len(set(epoch)) == 32  # 37 // 8 full batches, no repeats


def test_seeded_determinism_and_epochs_differ():
    a, b, c = take(train_iter(), 8), take(train_iter(), 8), take(train_iter(seed=1), 8)
    assert_same_batches(a, b)
    order = lambda bs: [i for x in bs for i in ids(x)]
    assert order(a) != order(c)
    assert order(a[:4]) != order(a[4:])  # epoch 1 is reshuffled


def test_no_shuffle_is_in_order():
    got = [i for b in take(train_iter(shuffle=False), 5) for i in ids(b)]
    assert got == list(range(32)) + list(range(8))


@pytest.mark.parametrize("stop", [2, 4, 6])  # mid-epoch, at the boundary, in epoch 1
def test_resume_gives_identical_batches(stop):
    ref = take(train_iter(), 10)
    it = train_iter()
    take(it, stop)
    state = json.loads(json.dumps(it.get_state()))
    assert state["seed"] == 0 and state["epoch"] * 4 + state["step"] == stop
    resumed = train_iter(seed=123)  # the seed comes from the state
    resumed.set_state(state)
    assert_same_batches(take(resumed, 10 - stop), ref[stop:])


def test_resume_on_another_process_count_continues_the_global_stream():
    ref = take(train_iter(), 7)
    it = train_iter()
    take(it, 3)
    state = it.get_state()
    shards = [train_iter(process_index=p, process_count=2) for p in range(2)]
    for shard in shards:
        shard.set_state(state)
    for s in range(3, 7):
        local = [ids(next(shard)) for shard in shards]
        assert local == [ids(ref[s])[0::2], ids(ref[s])[1::2]]


def test_resume_refuses_a_different_dataset():
    it = train_iter()
    with pytest.raises(UserInputError, match="num_examples=99"):
        it.set_state({"seed": 0, "epoch": 0, "step": 1, "num_examples": 99,
                      "global_batch_size": G})


@pytest.mark.parametrize("procs", [2, 4])
def test_multiprocess_shards_union_to_the_global_batch(procs):
    feats = make_features()
    single = take(train_iter(feats), 9)  # crosses two epoch boundaries
    touched = [collections.Counter() for _ in range(procs)]

    def counting(p):
        def transform(ex):
            touched[p][ex["id"]] += 1
            return ex
        return transform

    locals_ = [take(train_iter(LazyFeatures(feats), process_index=p, process_count=procs,
                               transform=counting(p)), 9) for p in range(procs)]
    for s in range(9):
        glob = ids(single[s])
        for p in range(procs):
            assert locals_[p][s]["input_ids"].shape[0] == G // procs
            assert ids(locals_[p][s]) == glob[p::procs]  # j ≡ p (mod P), in order
        union = collections.Counter(i for p in range(procs) for i in ids(locals_[p][s]))
        assert union == collections.Counter(glob)
    seen = [{i for b in bs for i in ids(b)} for bs in locals_]
    for p in range(procs):
        assert set(touched[p]) == seen[p]  # each process transforms only its own examples
    for p in range(procs):
        for q in range(p):
            step0 = set(ids(locals_[p][0])) & set(ids(locals_[q][0]))
            assert not step0


def test_bad_batch_configs():
    with pytest.raises(UserInputError, match="multiple of the process count 3"):
        train_iter(process_count=3)
    with pytest.raises(UserInputError, match="fewer than the global batch size 8"):
        train_iter(make_features(5))


# -------------------------------------------------------------------------------- eval

@pytest.mark.parametrize("n,procs", [(37, 1), (37, 2), (37, 4), (3, 4), (8, 2)])
def test_eval_covers_every_example_once(n, procs):
    feats = make_features(n)
    per_proc = [list(eval_batches(LazyFeatures(feats), batch_size=8, buckets=BUCKETS,
                                  pad_values=PAD, process_index=p, process_count=procs))
                for p in range(procs)]
    counts = {len(bs) for bs in per_proc}
    assert counts == {-(-n // 8)}  # every process yields the same number of batches
    seen = collections.Counter()
    for p, bs in enumerate(per_proc):
        for b in bs:
            assert b["input_ids"].shape[0] == 8 // procs and b["input_ids"].shape[1] in BUCKETS
            real = b["example_mask"] == 1
            np.testing.assert_array_equal(b["index"][real], b["id"][real])
            assert (b["index"][~real] == -1).all() and (b["input_ids"][~real] == -1).all()
            assert all(i % procs == p for i in b["index"][real])
            seen.update(int(i) for i in b["index"][real])
    assert seen == collections.Counter(range(n))
    # in order: concatenating step s of every process in turn gives 0..n-1
    order = [int(i) for s in range(len(per_proc[0]))
             for k in range(8 // procs) for p in range(procs)
             if (i := per_proc[p][s]["index"][k]) >= 0]
    assert order == list(range(n))


@pytest.mark.parametrize("procs", [1, 2, 4])
def test_eval_in_length_order(procs):
    """Visited shortest first, every example once; `index` is still its position in
    `features`, and the batches pad to fewer tokens than in file order."""
    feats = make_features(37, seed=3)
    lengths = np.array([len(f["input_ids"]) for f in feats])
    order = length_order(feats)
    assert sorted(order.tolist()) == list(range(37))
    assert (np.diff(lengths[order]) >= 0).all()
    with pytest.raises(ValueError, match="order has 36 entries for 37 features"):
        next(eval_batches(feats, batch_size=8, buckets=BUCKETS, pad_values=PAD,
                          order=order[:-1]))

    def batches(order):
        return [list(eval_batches(LazyFeatures(feats), batch_size=8, buckets=BUCKETS,
                                  pad_values=PAD, process_index=p, process_count=procs,
                                  order=order)) for p in range(procs)]

    seen, visited = collections.Counter(), []
    per_proc = batches(order)
    for s in range(len(per_proc[0])):
        for k in range(8 // procs):
            for p in range(procs):
                b = per_proc[p][s]
                if b["example_mask"][k]:
                    i = int(b["index"][k])
                    assert b["id"][k] == i and (b["input_ids"][k, :lengths[i]] == i).all()
                    seen[i] += 1
                    visited.append(i)
    assert seen == collections.Counter(range(37))
    assert visited == order.tolist()

    def padded(per_proc):
        return sum(b["input_ids"].size for bs in per_proc for b in bs)

    assert padded(per_proc) < padded(batches(None))


def test_eval_transform_is_applied():
    feats = [{"text": "ab" * (i + 1)} for i in range(5)]
    tok = lambda ex: {"input_ids": np.frombuffer(ex["text"].encode(), np.uint8).astype(int)}
    (b,) = eval_batches(feats, batch_size=8, buckets=[16], pad_values={}, transform=tok)
    assert b["input_ids"].shape == (8, 16)
    np.testing.assert_array_equal(b["input_ids"][4, :10], list(b"ab" * 5))
    np.testing.assert_array_equal(b["index"], [0, 1, 2, 3, 4, -1, -1, -1])


# ------------------------------------------------------------------- length grouping


def grouped_iter(feats, **kw):
    lengths = [len(f["input_ids"]) for f in feats]
    return train_iter(feats, lengths=lengths, group_batches=2, **kw)


def test_length_grouping_pads_less_and_covers_each_example_once_per_epoch():
    feats = make_features(n=96, seed=3)
    steps = pipeline.steps_per_epoch(96, G)
    grouped = take(grouped_iter(feats), steps)
    plain = take(train_iter(feats), steps)
    epoch_ids = [i for b in grouped for i in ids(b)]
    assert sorted(epoch_ids) == list(range(96))  # one epoch: every example exactly once

    def padded(batches):
        return sum(b["input_ids"].size for b in batches)

    assert padded(grouped) < padded(plain)
    # Deterministic in (seed, epoch), and the next epoch is a different order.
    assert_same_batches(grouped, take(grouped_iter(feats), steps))
    it = grouped_iter(feats)
    take(it, steps)
    assert [ids(b) for b in take(it, steps)] != [ids(b) for b in grouped]


@pytest.mark.parametrize("procs", [2, 4])
def test_length_grouping_keeps_the_sharding_contract_and_resumes(procs):
    feats = make_features(n=96, seed=3)
    single = take(grouped_iter(feats), 15)  # crosses an epoch boundary
    for p in range(procs):
        local = take(grouped_iter(feats, process_index=p, process_count=procs), 15)
        for s in range(15):
            assert ids(local[s]) == ids(single[s])[p::procs]
    it = grouped_iter(feats)
    take(it, 5)
    resumed = grouped_iter(feats)
    resumed.set_state(it.get_state())
    assert_same_batches(take(it, 12), take(resumed, 12))
