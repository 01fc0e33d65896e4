"""The optax transformation a run trains with, built from `config.optim`.

AdamW with decoupled weight decay on matrices only (never on biases or norm scales),
linear warm-up then linear/cosine/constant decay, optional global-norm clipping.
Gradient accumulation is not an optax wrapper here: `steps.py` sums the micro-batch
gradients and divides once by the total loss weight, so `batch=B, accum=k` gives the same
update as `batch=k*B, accum=1` even when micro-batches hold different numbers of tokens
(`optax.MultiSteps` averages per-micro-batch means, which does not).

Which params train is decided before the optimizer sees them: under `sft_jax.peft` the
transformation is initialised and applied on the trainable tree alone (LoRA factors and
the params trained in full), so the frozen base gets no moments at all (no
`optax.set_to_zero` placeholders either). LoRA factors are matrices and take weight
decay, as Hugging Face's Trainer gives them.
"""

from __future__ import annotations

import jax
import ml_collections
import optax

from sft_jax.errors import UserInputError


def warmup_steps(optim: ml_collections.ConfigDict, total_steps: int) -> int:
    if optim.warmup_steps > 0:
        return int(optim.warmup_steps)
    return round(optim.warmup_ratio * total_steps)


def make_schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Learning rate per update: warm-up from 0, then the configured decay to the end."""
    peak = float(optim.learning_rate)
    end = peak * float(optim.end_learning_rate_ratio)
    total = max(int(total_steps), 1)
    warm = min(warmup_steps(optim, total), total)
    decay_steps = max(total - warm, 1)
    if optim.schedule == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    elif optim.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=end / peak if peak else 0.0)
    elif optim.schedule == "constant":
        decay = optax.constant_schedule(peak)
    else:
        raise UserInputError(
            f"optim.schedule: unknown schedule {optim.schedule!r} (linear, cosine, constant)"
        )
    if warm == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warm), decay], [warm])


def decay_mask(params):
    """True for weights that take weight decay: matrices and embeddings, not 1-D leaves."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(
    optim: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = make_schedule(optim, total_steps)
    parts = []
    if optim.max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(float(optim.max_grad_norm)))
    parts.append(
        optax.adamw(
            schedule,
            b1=float(optim.b1),
            b2=float(optim.b2),
            eps=float(optim.eps),
            weight_decay=float(optim.weight_decay),
            mask=decay_mask,
        )
    )
    return optax.chain(*parts), schedule
