"""What to train: LoRA ranks and targets vs full fine-tuning, head-only and BitFit.

    sft-jax sweep --config=configs/classification.py --sweep=experiments/sweeps/lora.py \
        --workdir=DIR
    sft-jax report DIR

MiniLM-L6 on all 10,258 Rotten Tomatoes training snippets, 200 updates of 32, 3 seeds per
setting (`train.replicas=3`), validation every 50 updates. Methods (`SETTINGS`, each run's
`label`):

- `full`: every parameter;
- `head-only`: the classifier head alone (`peft.head_only`: the params the checkpoint
  lacks);
- `bitfit`: every bias and the head (Ben Zaken et al. 2022);
- `lora-r{1,4,8,16,64}-qv`: LoRA on the attention query and value kernels (Hu et al. 2021),
  alpha = 2 x rank;
- `lora-r8-attention`: LoRA r=8 on the query, key, value and output kernels;
- `lora-r8-all`: LoRA r=8 on every attention and MLP kernel.

Learning rates (`LEARNING_RATES`): full fine-tuning at the classification config's 1e-4;
every lighter method at the rate of its paper's range (head-only and BitFit 1e-3, LoRA
5e-4) and at ten times that, since their papers train for many epochs and 200 updates are
two thirds of one: the analysis picks each method's rate on validation accuracy. `:tiny`
is `bitfit` and `lora-r4-qv` at their first rate, at the size of
`configs/classification.py:runlocal`, 2 replicas: the notebook's code path, for tests.
"""

from experiments.sweeps import TINY, short_runs
from sft_jax import sweeps

QV = ("attention/(query|value)/kernel",)
ATTENTION = ("attention/(query|key|value|out)/kernel",)
ALL_KERNELS = ("attention/(query|key|value|out)/kernel", "mlp/(wi|wo)/kernel")
DEFAULTS = {"peft.method": "none", "peft.lora_rank": 8, "peft.lora_alpha": 16.0,
            "peft.lora_targets": QV, "peft.head_only": False, "peft.bitfit": False}


def lora(rank: int, targets: tuple[str, ...]) -> dict:
    return {**DEFAULTS, "peft.method": "lora", "peft.lora_rank": rank,
            "peft.lora_alpha": 2.0 * rank, "peft.lora_targets": targets}


SETTINGS = {
    "full": DEFAULTS,
    "head-only": {**DEFAULTS, "peft.method": "freeze", "peft.head_only": True},
    "bitfit": {**DEFAULTS, "peft.method": "freeze", "peft.bitfit": True},
    **{f"lora-r{rank}-qv": lora(rank, QV) for rank in (1, 4, 8, 16, 64)},
    "lora-r8-attention": lora(8, ATTENTION),
    "lora-r8-all": lora(8, ALL_KERNELS),
}
LEARNING_RATES = {name: [5e-3, 5e-4] for name in SETTINGS if name.startswith("lora")}
LEARNING_RATES |= {"full": [1e-4], "head-only": [1e-2, 1e-3], "bitfit": [1e-2, 1e-3]}

FULL = short_runs(200, 50)


def get_sweep(arg: str | None = None) -> list[dict]:
    if arg == "tiny":
        return sweeps.product(labelled(["bitfit", "lora-r4-qv"], rates=1), [TINY])
    if arg:
        raise ValueError(f"unknown sweep variant {arg!r} (known: tiny)")
    return sweeps.product(labelled(SETTINGS), [FULL])


def labelled(names, rates: int | None = None) -> list[dict]:
    """The settings `names` at each of their `LEARNING_RATES` (the first `rates` of them),
    each with its name as the run's `label`."""
    return [{"label": name, **SETTINGS[name], "optim.learning_rate": rate}
            for name in names for rate in LEARNING_RATES[name][:rates]]
