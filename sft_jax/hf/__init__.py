"""Hugging Face interop: local model directories (`checkpoint_dir.py`), the tensor-table
engine the family converters are declared with (`tables.py`, `decoder_tables.py`),
export (`export.py`), GGUF import (`gguf.py`).

Hugging Face weight and class names appear only in the family packages
(`sft_jax/models/<family>/`); nothing here names a model_type. The package imports none of
its modules itself: `export` imports the model registry, whose families import `tables`.
"""
