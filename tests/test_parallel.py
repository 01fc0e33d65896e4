"""`sft_jax/parallel.py` pieces that need no mesh."""

import numpy as np

from sft_jax import parallel
from sft_jax.data import seq2seq


def test_agree_on_length_pads_each_field_group_to_the_longest_of_any_process(monkeypatch):
    """Two processes: this one has source length 8 and target 4, the other 6 and 12. Each
    group is padded to its own longest (8 and 12), with the pad value of each field."""
    pad_id = 3
    batch = {
        "encoder_input_ids": np.full((2, 8), 5, np.int32),
        "encoder_segment_ids": np.ones((2, 8), np.int32),
        "decoder_input_ids": np.full((2, 4), 7, np.int32),
        "decoder_segment_ids": np.ones((2, 4), np.int32),
        "example_mask": np.ones((2,), np.float32),
    }
    other = {"encoder": 6, "decoder": 12}
    gathered = []

    def allgather(local):
        keys = sorted(k for k, v in batch.items() if v.ndim >= 2)
        gathered.append(local)
        return np.stack([local, [other[k.split("_")[0]] for k in keys]])

    monkeypatch.setattr(parallel.jax, "process_count", lambda: 2)
    monkeypatch.setattr(parallel.multihost_utils, "process_allgather", allgather)
    out = parallel.agree_on_length(batch, seq2seq.pad_values(pad_id))
    assert len(gathered) == 1  # one collective for all fields
    assert out["encoder_input_ids"].shape == out["encoder_segment_ids"].shape == (2, 8)
    assert out["decoder_input_ids"].shape == out["decoder_segment_ids"].shape == (2, 12)
    np.testing.assert_array_equal(out["decoder_segment_ids"][:, 4:], 0)
    np.testing.assert_array_equal(out["decoder_input_ids"][:, 4:], pad_id)
    np.testing.assert_array_equal(out["encoder_input_ids"], batch["encoder_input_ids"])
    assert out["example_mask"] is batch["example_mask"]


def test_sharding_context_makes_logical_constraints_take_effect():
    """`nn.with_logical_constraint` is a no-op unless traced inside `sharding_context`
    (the context mesh and the logical-axis rules); the pmap placement enters neither."""
    import jax
    import jax.numpy as jnp
    from conftest import load_config
    from flax import linen as nn

    from sft_jax import placement

    def constrained(x):  # B T D
        return nn.with_logical_constraint(x * 2, ("batch", "length", "embed"))

    def lowered() -> str:
        return jax.jit(constrained).lower(jnp.ones((2, 3, 4))).as_text()

    config = load_config()
    jit = placement.for_config(config)
    assert isinstance(jit, placement.MeshPlacement) and jit.axis_name is None
    assert "sharding_constraint" not in lowered()
    with jit.context():
        assert "sharding_constraint" in lowered()
    config.train.parallelism = "pmap"
    pmap = placement.for_config(config)
    assert isinstance(pmap, placement.PmapPlacement) and pmap.axis_name is not None
    with pmap.context():
        assert "sharding_constraint" not in lowered()
