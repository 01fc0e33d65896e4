"""Lower-cost fine-tuning over plain param pytrees: LoRA and partial freezing.

Nothing here knows a model family's code: a run's `Plan` (`plan.py`) splits the param
tree into what trains (params trained in full, `freeze.py`, and LoRA factors,
`lora.py`) and the frozen base, and joins them back (`Plan.combine`) inside the train
and eval steps. The optimizer sees the trainable tree only. `export.py` writes a LoRA
run's adapter in Hugging Face PEFT's layout; the task's own export writes the merged
model. Configured by `config.peft` (`sft_jax/config.py`):

    --config.peft.method=lora --config.peft.lora_rank=8 --config.peft.lora_alpha=16 \
        --config.peft.lora_targets='("attention/(query|value)/",)'
    --config.peft.method=freeze --config.peft.last_n_layers=2
    --config.peft.method=freeze --config.peft.bitfit=True
"""

from sft_jax.peft.export import AdapterLayout, adapter_layout, write_adapter
from sft_jax.peft.plan import METHODS, Plan, base_fingerprint, build, check_base

__all__ = [
    "METHODS",
    "AdapterLayout",
    "Plan",
    "adapter_layout",
    "base_fingerprint",
    "build",
    "check_base",
    "write_adapter",
]
