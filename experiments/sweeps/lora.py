"""What to train: LoRA ranks and targets vs full fine-tuning, head-only and BitFit.

    sft-jax sweep --config=configs/classification.py --sweep=experiments/sweeps/lora.py \
        --workdir=DIR
    sft-jax report DIR

MiniLM-L6 on all 10,258 Rotten Tomatoes training snippets, 200 updates of 32, 3 seeds per
setting (`train.replicas=3`), validation every 50 updates. Settings (`SETTINGS`):

- `full`: every parameter, learning rate 1e-4 (the classification config's);
- `head-only`: the classifier head alone (`peft.head_only`: the params the checkpoint
  lacks), 1e-3;
- `bitfit`: every bias and the head (Ben Zaken et al. 2022), 1e-3;
- `lora-r{1,4,8,16,64}-qv`: LoRA on the attention query and value kernels (Hu et al. 2021),
  alpha = 2 x rank, 5e-4;
- `lora-r8-attention`: LoRA r=8 on the query, key, value and output kernels;
- `lora-r8-all`: LoRA r=8 on every attention and MLP kernel.

The larger learning rates of the lighter methods follow their papers' ranges (the trained
weights start at zero or see few parameters). `:tiny` is `bitfit` and `lora-r4-qv` at the
size of `configs/classification.py:runlocal`, 2 replicas: the notebook's code path, for
tests.
"""

from experiments.sweeps import TINY, short_runs
from sft_jax import sweeps

QV = ("attention/(query|value)/kernel",)
ATTENTION = ("attention/(query|key|value|out)/kernel",)
ALL_KERNELS = ("attention/(query|key|value|out)/kernel", "mlp/(wi|wo)/kernel")
DEFAULTS = {"peft.method": "none", "peft.lora_rank": 8, "peft.lora_alpha": 16.0,
            "peft.lora_targets": QV, "peft.head_only": False, "peft.bitfit": False,
            "optim.learning_rate": 1e-4}


def lora(rank: int, targets: tuple[str, ...]) -> dict:
    return {**DEFAULTS, "peft.method": "lora", "peft.lora_rank": rank,
            "peft.lora_alpha": 2.0 * rank, "peft.lora_targets": targets,
            "optim.learning_rate": 5e-4}


SETTINGS = {
    "full": DEFAULTS,
    "head-only": {**DEFAULTS, "peft.method": "freeze", "peft.head_only": True,
                  "optim.learning_rate": 1e-3},
    "bitfit": {**DEFAULTS, "peft.method": "freeze", "peft.bitfit": True,
               "optim.learning_rate": 1e-3},
    **{f"lora-r{rank}-qv": lora(rank, QV) for rank in (1, 4, 8, 16, 64)},
    "lora-r8-attention": lora(8, ATTENTION),
    "lora-r8-all": lora(8, ALL_KERNELS),
}

FULL = short_runs(200, 50)


def get_sweep(arg: str | None = None) -> list[dict]:
    if arg == "tiny":
        return sweeps.product(labelled(["bitfit", "lora-r4-qv"]), [TINY])
    if arg:
        raise ValueError(f"unknown sweep variant {arg!r} (known: tiny)")
    return sweeps.product(labelled(SETTINGS), [FULL])


def labelled(names) -> list[dict]:
    """The settings `names`, each with its name as the run's `label`."""
    return [{"label": name, **SETTINGS[name]} for name in names]
