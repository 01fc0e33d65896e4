"""Attention's two products in bfloat16, as jnp.einsum wrote them and as
`models.dense_dot.einsum` writes them, timed side by side in one process.

    python -m experiments.bf16_attention                # the shapes below, best of 15
    python -m experiments.bf16_attention --repeats 2 --tiny

One jitted forward and backward of scaled dot-product attention (scores q·kᵀ into
float32, softmax, probabilities·v) on bfloat16 q, k, v, written two ways:

    einsum      jnp.einsum: scores with `preferred_element_type=float32`, probabilities·v
                bf16 -> bf16; JAX's gradients multiply a float32 cotangent by a bf16
                operand (a mixed product) or bf16 by bf16 into bf16
    dense_dot   `dense_dot.einsum`: every product of both passes bf16 x bf16 -> float32

The two are timed alternately (best of `--repeats` calls each, after a warm-up), so a
machine that slows down mid-run slows both. Prints a markdown table with the CPU's model
and bfloat16 flags (`bf16_matmul.cpu_description`).
"""

from __future__ import annotations

import argparse
import sys
import time

from experiments.bf16_matmul import cpu_description

# (name, B, T, query heads N, kv heads K, head size H)
SHAPES = (
    ("MiniLM", 1, 512, 12, 12, 32),
    ("SmolLM2-135M", 1, 512, 9, 3, 64),
    ("SmolLM2-135M", 4, 128, 9, 3, 64),
    ("SmolLM2-135M", 1, 2048, 9, 3, 64),
)
TINY_SHAPES = (("tiny", 1, 16, 4, 2, 8),)
FORMS = ("einsum", "dense_dot")


def attention_step(form: str):
    """jit(value_and_grad) of sum(attention(q, k, v)²) with the products of `form`."""
    import jax
    import jax.numpy as jnp

    from sft_jax.models import dense_dot

    def attention(q, k, v):  # q [B, T, N, H], k/v [B, S, K, H]
        b, t, n, h = q.shape
        q = q.reshape(b, t, k.shape[2], n // k.shape[2], h)  # B T K G H
        if form == "einsum":
            scores = jnp.einsum("BTKGH,BSKH->BKGTS", q, k, preferred_element_type=jnp.float32)
        else:
            scores = dense_dot.einsum("BTKGH,BSKH->BKGTS", q, k, out_dtype=jnp.float32)
        probs = jax.nn.softmax(scores * h**-0.5, axis=-1).astype(v.dtype)  # B K G T S
        if form == "einsum":
            out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v)
        else:
            out = dense_dot.einsum("BKGTS,BSKH->BTKGH", probs, v)
        return out.reshape(b, t, n, h)

    def loss(q, k, v):
        return jnp.sum(attention(q, k, v).astype(jnp.float32) ** 2)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def measure(shape: tuple, repeats: int) -> dict[str, float]:
    """Best seconds per step of each form at `shape`."""
    import jax
    import jax.numpy as jnp

    _, b, t, n, k_heads, h = shape
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (b, t, n, h), jnp.bfloat16)
    k = jax.random.normal(keys[1], (b, t, k_heads, h), jnp.bfloat16)
    v = jax.random.normal(keys[2], (b, t, k_heads, h), jnp.bfloat16)
    steps = {form: attention_step(form) for form in FORMS}
    for step in steps.values():
        jax.block_until_ready(step(q, k, v))
    best = dict.fromkeys(FORMS, float("inf"))
    for _ in range(repeats):
        for form, step in steps.items():
            start = time.perf_counter()
            jax.block_until_ready(step(q, k, v))
            best[form] = min(best[form], time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--tiny", action="store_true", help="one toy shape (a quick check)")
    args = parser.parse_args(argv)
    cpu = cpu_description()
    flags = ", ".join(f for f, present in cpu["flags"].items() if present) or "none"
    lines = [f"CPU: {cpu['model']} (bf16 flags: {flags}); best of {args.repeats}", "",
             "| shape | B×T | N/K heads × H | einsum ms | dense_dot ms | speed-up |",
             "|---|---|---|---|---|---|"]
    for shape in TINY_SHAPES if args.tiny else SHAPES:
        name, b, t, n, k_heads, h = shape
        best = measure(shape, args.repeats)
        lines.append(f"| {name} | {b}×{t} | {n}/{k_heads} × {h} | {best['einsum'] * 1e3:.1f} "
                     f"| {best['dense_dot'] * 1e3:.1f} "
                     f"| {best['einsum'] / best['dense_dot']:.2f}× |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
