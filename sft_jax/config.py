"""The config sections every task shares; each file in `configs/` fills in and overrides them.

Every hyper-parameter of a run lives here or in the task file: nothing is hidden in a
loss or a step function. Sections: model, data, optim, peft, train, eval, mesh,
checkpoint, distributed, plus the top-level `task` and `seed`. Each key's type and range
is a rule in `sft_jax.validate.RULES`, checked before a run touches anything.
"""

import ml_collections

from sft_jax.errors import UserInputError


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.task = ""
    config.seed = 0
    # A short name for the run's setting ("lora-r8"): sweeps name runs and reports name
    # groups by it, in place of the config values it stands for.
    config.label = ""

    config.model = ml_collections.ConfigDict()
    config.model.checkpoint = ""  # local HF directory or an asset name (sft_jax.assets)
    config.model.dtype = "float32"  # compute dtype; params are always float32
    config.model.dropout = -1.0  # >=0: every dropout rate of the model; <0: its own rates
    config.model.remat = "none"  # none | full | dots: recompute layer activations in backward
    # How attention computes its scores (sft_jax.models.attention): auto | xla (einsum +
    # softmax, [B, N, T, S] float32 scores) | blockwise (online softmax over key blocks of
    # attention_block) | cudnn (GPU, bfloat16/float16). auto: by backend and row length.
    config.model.attention = "auto"
    config.model.attention_block = 512

    config.data = ml_collections.ConfigDict()
    config.data.train = ""  # file (.jsonl/.csv/.tsv), tfds:NAME[/CONFIG]:SPLIT or ASSET:SPLIT
    config.data.validation = ""
    config.data.test = ""
    config.data.max_length = 128
    config.data.buckets = ()  # padded lengths; () = powers of two up to max_length
    # >1: sort each window of this many global batches by length before batching (less
    # padding; batch order is still shuffled). 0 = plain shuffling.
    config.data.group_by_length = 0
    config.data.tfds_data_dir = ""
    config.data.limit_train = 0  # >0: keep only the first N training records
    config.data.limit_eval = 0  # >0: keep only the first N records of each eval split
    # >0: a seeded subset of N training records (stratified by label for classification),
    # taken after limit_train; train_fraction in (0, 1]: the same by fraction (1 = all).
    config.data.train_size = 0
    config.data.train_fraction = 1.0
    # Cross-validation (sft_jax.data.folds): records keep their own `fold` field, the
    # others are dealt into folds stratified by label.
    config.data.update({
        "folds": 0,  # K >= 2: data.train is the pool of a K-fold cross-validation; 0 = off
        "fold": 0,  # the held-out fold, 0..K-1: the test split
        "fold_seed": 0,  # seeds the folds of records without a `fold` field (not `seed`)
        "cv_validation_fraction": 0.1,  # validation: this share of the other folds (`seed`)
    })
    # Training-text augmentation (classification, linear): "" = off | "eda" (EDA, Wei & Zou
    # 2019, sft_jax.data.augment): eda_n_aug new sentences per training record, each by one
    # of synonym replacement, random insertion, random swap (n = max(1, alpha * words)
    # changes) and random deletion (each word with probability alpha); alpha 0 = not used.
    # Defaults: the paper's Table 3 for 5,000+ training sentences.
    # | "backtranslation" (sft_jax.generation.backtranslation): one paraphrase per record,
    # English -> bt_pivot -> English by the decoder LM bt_model (an asset or HF directory)
    # with a few-shot prompt, greedy, bt_batch_size texts per call, at most
    # bt_max_new_tokens tokens per translation; cached as JSONL in bt_cache
    # ("" = WORKDIR/augment/; a shared directory lets a sweep's runs share one cache).
    config.data.augment = ""
    for op in ("sr", "ri", "rs", "rd"):  # data.eda_alpha_sr, _ri, _rs, _rd
        config.data[f"eda_alpha_{op}"] = 0.1
    config.data.eda_n_aug = 4
    config.data.bt_model = "gemma3-270m"
    config.data.bt_pivot = "Spanish"
    config.data.bt_batch_size = 16
    config.data.bt_max_new_tokens = 96
    config.data.bt_cache = ""

    config.optim = ml_collections.ConfigDict()
    config.optim.learning_rate = 5e-5
    config.optim.schedule = "linear"  # linear | cosine | constant (after warm-up)
    config.optim.warmup_steps = 0
    config.optim.warmup_ratio = 0.1  # used when warmup_steps == 0
    config.optim.end_learning_rate_ratio = 0.0
    config.optim.weight_decay = 0.01  # never applied to biases and norm scales
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.eps = 1e-8
    config.optim.max_grad_norm = 1.0  # 0 disables clipping
    config.optim.grad_accum = 1  # micro-batches per update; batch_size is per micro-batch

    # Which params train (sft_jax/peft): all (none), LoRA adapters, or a chosen subset.
    # Paths are '/'-joined param names (e.g. encoder/layer_5/attention/query/kernel);
    # patterns are regexes searched in them. Under lora and freeze the task head and any
    # param the checkpoint lacks train in full.
    config.peft = ml_collections.ConfigDict()
    config.peft.method = "none"  # none (full fine-tuning) | lora | freeze
    config.peft.lora_rank = 8
    config.peft.lora_alpha = 16.0  # the delta is (lora_alpha / lora_rank) * A @ B
    config.peft.lora_dropout = 0.0  # only 0: LoRA is applied as a weight delta
    config.peft.lora_targets = ("attention/(query|value)/kernel",)  # "kernel$": every kernel
    config.peft.head_only = False  # freeze: train the head alone
    config.peft.last_n_layers = 0  # train layer_{i} for the last N layers in full
    config.peft.bitfit = False  # train every bias in full (BitFit)
    config.peft.train_patterns = ()  # train every param matching one of these in full

    config.train = ml_collections.ConfigDict()
    config.train.steps = 1000  # optimizer updates; 0 = evaluate the starting point only
    config.train.batch_size = 32  # global micro-batch size
    config.train.parallelism = "jit"  # jit (device mesh) | pmap (data parallel)
    # K > 1: K independent replicas in one compiled program (vmap); replica k is the run
    # with seed + k (init of new layers, dropout, data order). jit only.
    config.train.replicas = 1
    config.train.log_every = 50
    config.train.eval_every = 500  # 0 = only at the end
    config.train.progress_bar = True
    # A step whose loss, gradient norm or updated params' norm is not finite: stop (exit
    # status 3, the last good checkpoint kept) | skip (that update is not applied) | ignore
    config.train.on_nonfinite = "stop"
    # N > 0: stop after N periodic evaluations (train.eval_every) without an improvement
    # of checkpoint.best_metric by more than early_stopping_min_delta; 0 = off.
    config.train.early_stopping_patience = 0
    config.train.early_stopping_min_delta = 0.0
    # ε of the label-smoothed cross-entropy in training (classification, dialogue, seq2seq)
    config.train.label_smoothing = 0.0
    # Token losses of LM training (dialogue, seq2seq) with the float32 logits made this many
    # tokens at a time and rematerialised in backward (tasks.base.chunked_token_losses):
    # the [tokens, V] logits and their gradient are never held at once. 0 = in one go.
    config.train.loss_chunk = 512
    # NEFTune: uniform noise alpha/sqrt(L·d) on the input token embeddings in training
    config.train.neftune_alpha = 0.0

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 64
    config.eval.splits = ("validation", "test")  # evaluated at the end, when given
    config.eval.periodic_split = "validation"  # evaluated every train.eval_every steps
    config.eval.write_predictions = True

    config.mesh = ml_collections.ConfigDict()
    # Mesh shape over all devices; -1 takes what the other axes leave.
    config.mesh.data = -1
    config.mesh.fsdp = 1
    config.mesh.tensor = 1
    # Logical axis -> mesh axes. Parameters name logical axes; these rules place them.
    config.mesh.rules = (
        ("batch", ("data", "fsdp")),
        ("vocab", "tensor"),
        ("embed", "fsdp"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),
        ("kv", None),
        ("position", None),
        ("token_type", None),
        ("layers", None),
        ("classes", None),
        ("length", None),
    )

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every = 500  # steps between saves; 0 = only at the end
    config.checkpoint.keep = 2  # latest checkpoints kept for resume
    config.checkpoint.best_metric = "accuracy"  # on eval.periodic_split; "" = no best copy
    config.checkpoint.best_mode = "max"
    config.checkpoint.use_best_for_final = True  # final eval and export use the best params
    config.checkpoint.export = True  # write a Hugging Face directory to workdir/export

    config.distributed = ml_collections.ConfigDict()
    # Explicit multi-host set-up; leave empty for one process (or TPU/SLURM auto-detection
    # with initialize=True).
    config.distributed.initialize = False
    config.distributed.coordinator_address = ""
    config.distributed.num_processes = 0
    config.distributed.process_id = -1
    config.distributed.local_device_ids = ()
    return config


def parse_variants(arg: str | None, known: set[str], where: str) -> set[str]:
    """`configs/x.py:a,b` -> {"a", "b"}; an unknown variant is a user error."""
    variants = set(filter(None, (arg or "").split(",")))
    unknown = variants - known
    if unknown:
        raise UserInputError(
            f"{where}: unknown config variant(s) {sorted(unknown)} (known: {sorted(known)})"
        )
    return variants


def seq2seq_keys(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Adds the keys of the seq2seq task (`sft_jax.tasks.seq2seq`) with their defaults;
    `configs/translation.py` and `configs/summarization.py` start from it."""
    config.task = "seq2seq"
    config.model.from_scratch = ml_collections.ConfigDict()  # HF-style config dict, or empty
    config.model.tokenizer = ""  # "" = the checkpoint's, or trained on data.train
    config.data.source_field = "source"
    config.data.target_field = "target"
    config.data.source_prefix = ""  # encoder-decoder: str.format template over record fields
    config.data.prompt_template = "{source}"  # decoder-only: the user turn ({source}, fields)
    config.data.chat_template = ""  # decoder-only: "" = the tokenizer's own template
    config.data.max_source_length = 128  # source tokens kept (EOS kept on truncation)
    config.data.max_target_length = 128
    config.data.source_buckets = ()  # () = powers of two up to max_source_length
    config.data.target_buckets = ()
    config.data.packing = True  # several pairs per training row (segment ids)
    config.data.vocab_size = 8000  # tokenizer trained from scratch
    config.data.tokenizer_kind = "unigram"
    config.train.label_smoothing = 0.1
    config.eval.metrics = ("bleu", "chrf")  # and/or "rouge"
    config.eval.bleu_tokenize = "13a"
    config.eval.num_beams = 4
    config.eval.length_penalty = 1.0
    config.eval.early_stopping = True
    config.eval.max_new_tokens = 128
    config.eval.generation_batch_size = 32
    config.eval.generate_limit = 0  # examples decoded per split; 0 = all
    config.eval.stop_tokens = ()  # decoder-only: besides EOS, e.g. "<|im_end|>"
    return config
