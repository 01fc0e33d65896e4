"""Memory of one compiled SmolLM2-135M-shaped train step, from XLA's own memory analysis
(`jit(step).lower(...).compile().memory_analysis()`): nothing is initialised or run.

    python -m experiments.step_memory --shape 1x512 --loss-chunk 0 --attention xla
    python -m experiments.step_memory --shape 1x2048 --loss-chunk 1024 --attention blockwise

The step is the dialogue task's (next-token cross-entropy over `packing.next_token_targets`,
`train.loss_chunk` tokens at a time: `tasks.base.token_losses_of`), its gradient and an
AdamW update, for the `bench_models.SMOLLM2_135M` shapes in float32. Prints one JSON line:
the step's temporaries ('temp', the buffers alive at its peak besides its arguments and
outputs), arguments and outputs, in MiB.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import optax

from experiments import bench_models as bm
from sft_jax.data import packing
from sft_jax.models import registry
from sft_jax.tasks.base import lm_head_kwargs, token_losses_of, training_loss


def step_memory(shape: tuple[int, int], loss_chunk: int, attention: str,
                block: int) -> dict[str, float]:
    """The memory analysis (MiB) of one train step at batch x length `shape`."""
    module, _ = registry.build_model(bm.SMOLLM2_135M, attention=attention,
                                     attention_block=block)
    tx = optax.adamw(1e-4)
    b, t = shape

    def loss(params, batch):
        out = module.apply({"params": params}, batch["input_ids"], positions=batch["positions"],
                           segment_ids=batch["segment_ids"], **lm_head_kwargs(loss_chunk))
        targets, weights = packing.next_token_targets(
            batch["input_ids"], batch["segment_ids"], batch["loss_mask"])
        losses = token_losses_of(out, targets, training_loss(0.0), loss_chunk)  # B T
        return jnp.sum(losses * weights) / jnp.sum(weights)

    def step(params, opt_state, batch):
        value, grads = jax.value_and_grad(loss)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    ids = jax.ShapeDtypeStruct((b, t), jnp.int32)
    params = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
                            )["params"]
    opt_state = jax.eval_shape(tx.init, params)
    batch = {k: ids for k in ("input_ids", "positions", "segment_ids", "loss_mask")}
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, batch).compile()
    mem = compiled.memory_analysis()
    mib = 2.0**20
    return {"temp": mem.temp_size_in_bytes / mib, "arguments": mem.argument_size_in_bytes / mib,
            "outputs": mem.output_size_in_bytes / mib, "aliased": mem.alias_size_in_bytes / mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="1x512", help="batch x length")
    parser.add_argument("--loss-chunk", type=int, default=0)
    parser.add_argument("--attention", default="xla")
    parser.add_argument("--block", type=int, default=512)
    args = parser.parse_args()
    shape = tuple(int(x) for x in args.shape.split("x"))
    result = step_memory(shape, args.loss_chunk, args.attention, args.block)
    print(json.dumps({"shape": args.shape, "loss_chunk": args.loss_chunk,
                      "attention": args.attention, "block": args.block,
                      **{k: round(v, 1) for k, v in result.items()}}))


if __name__ == "__main__":
    main()
