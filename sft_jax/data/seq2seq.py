"""Sequence-to-sequence pairs: source/target text → token ids → padded or packed rows.

Encoder-decoder batch contract (int32; S source length, T target length, each padded to
its own bucket):
    encoder_input_ids    [B, S]  source ids, ending with EOS; `pad_id` on padding
    encoder_segment_ids  [B, S]  1..n numbering the pairs of a row; 0 = padding
    encoder_positions    [B, S]  position within the pair's source (restarts at 0); 0 on pad
    decoder_input_ids    [B, T]  the target shifted right: decoder start id, target[:-1]
    decoder_target_ids   [B, T]  the target (ending with EOS): what the output at t predicts;
                                 0 on padding
    decoder_segment_ids  [B, T]  the pair's segment id (the same as its source); 0 = padding
    decoder_positions    [B, T]  position within the pair's target; 0 on padding
Every decoder position with a non-zero segment id is a loss target. A padded row is a
packed row holding one pair, so the model and the loss never know which they got.
Batches from `pipeline` also carry `example_mask` [B] and, for eval, `index` [B].

Token ids of a pair (`encode_source`, `encode_target`): the tokenizer's own special tokens
(T5: `x </s>`; BART: `<s> x </s>`), EOS appended when the tokenizer does not add it.
Truncation to `max_length` keeps the first `max_length - 1` ids and the EOS, so a long
document is cut, never its end-of-sequence marker.

Packing (`pack_pairs`): first-fit decreasing (by source length, ties in input order) over
rows of `source_length` × `target_length` tokens; a pair goes into the first of the most
recent `window` open rows with room on both sides, else a new row. Deterministic: the
same pairs give the same rows (resume indexes them, see `data.packing`).

For decoder-only models a pair becomes a prompt/completion record for `data.chat`;
`truncate_text` cuts the source text to a number of tokens first, and
`format_template` renders the prompt (or an encoder prefix) from the record's fields.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sft_jax.data.pipeline import bucket_lengths
from sft_jax.errors import UserInputError

ENCODER_FIELDS: tuple[str, ...] = ("encoder_input_ids", "encoder_segment_ids",
                                   "encoder_positions")
DECODER_FIELDS: tuple[str, ...] = ("decoder_input_ids", "decoder_target_ids",
                                   "decoder_segment_ids", "decoder_positions")
FIELDS = ENCODER_FIELDS + DECODER_FIELDS
Pair = Mapping[str, Sequence[int]]  # {"source_ids": [...], "target_ids": [...]}


def pad_values(pad_id: int) -> dict[str, int]:
    """`pad_values` for `pad_batch`/`TrainIterator`/`eval_batches` under the contract."""
    return {"encoder_input_ids": int(pad_id), "decoder_input_ids": int(pad_id)}


def field_buckets(source_buckets: Sequence[int], target_buckets: Sequence[int]
                  ) -> dict[str, list[int]]:
    """Per-field bucket lengths for `pad_batch` (each side padded to its own bucket)."""
    return {**{k: list(source_buckets) for k in ENCODER_FIELDS},
            **{k: list(target_buckets) for k in DECODER_FIELDS}}


def side_buckets(max_length: int, explicit: Sequence[int], key: str) -> list[int]:
    """`explicit` checked against `max_length`, or powers of two up to it (from 16)."""
    return bucket_lengths(int(max_length), explicit=[int(b) for b in explicit] or None,
                          config_key=key)


def _eos_terminated(ids: list[int], eos_id: int, max_length: int | None) -> tuple[list[int],
                                                                                    bool]:
    if not ids or ids[-1] != eos_id:
        ids = [*ids, eos_id]
    if max_length is None or len(ids) <= max_length:
        return ids, False
    if max_length < 2:
        raise UserInputError(f"max length {max_length}: must be at least 2 (a token and EOS)")
    return [*ids[: max_length - 1], eos_id], True


def encode_source(tokenizer: Any, text: str, *, eos_id: int, max_length: int | None
                  ) -> tuple[list[int], bool]:
    """`(ids ending with EOS, truncated?)` for an encoder input."""
    ids = [int(i) for i in tokenizer(text)["input_ids"]]
    return _eos_terminated(ids, eos_id, max_length)


def encode_target(tokenizer: Any, text: str, *, eos_id: int, max_length: int | None
                  ) -> tuple[list[int], bool]:
    """`(ids ending with EOS, truncated?)` for a decoder target (`text_target`: tokenizers
    with a separate target vocabulary, e.g. Marian, use it)."""
    ids = [int(i) for i in tokenizer(text_target=text)["input_ids"]]
    return _eos_terminated(ids, eos_id, max_length)


def truncate_text(tokenizer: Any, text: str, max_tokens: int) -> tuple[str, bool]:
    """`text` cut after its first `max_tokens` tokens (no special tokens counted);
    `(text, truncated?)`. Fast tokenizers cut at the character offset of the last kept
    token, so the kept text is exactly the original prefix."""
    if max_tokens <= 0:
        return text, False
    fast = bool(getattr(tokenizer, "is_fast", False))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=fast)
    ids = enc["input_ids"]
    if len(ids) <= max_tokens:
        return text, False
    if fast:
        return text[: enc["offset_mapping"][max_tokens - 1][1]], True
    return tokenizer.decode(ids[:max_tokens]), True


def format_template(template: str, fields: Mapping[str, Any], key: str, where: str) -> str:
    """`template.format(**fields)`; a missing field names the record (`where`) and the
    config `key`."""
    try:
        return template.format(**fields)
    except KeyError as err:
        known = ", ".join(sorted(fields))
        raise UserInputError(f"{where}: {key} names field {err.args[0]!r}, which the record "
                             f"lacks (fields: {known})") from None
    except (ValueError, IndexError) as err:
        raise UserInputError(f"{key}: {template!r} is not a valid str.format template "
                             f"({err})") from None


def check_template(template: str, key: str) -> None:
    """A `str.format` template with named fields only, or a UserInputError naming `key`."""
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as err:
        raise UserInputError(f"{key}: {template!r} is not a valid str.format template "
                             f"({err})") from None
    if any(n == "" or n.isdigit() for n in names):
        raise UserInputError(f"{key}: {template!r} uses positional fields; name them "
                             "({source}, {aspect}, ...)")


def _check_pair(pair: Pair, i: int, source_length: int | None, target_length: int | None
                ) -> tuple[np.ndarray, np.ndarray]:
    src = np.asarray(pair["source_ids"], np.int32)
    tgt = np.asarray(pair["target_ids"], np.int32)
    if src.ndim != 1 or tgt.ndim != 1 or len(src) == 0 or len(tgt) == 0:
        raise ValueError(f"pair {i}: source_ids {src.shape} and target_ids {tgt.shape} must "
                         "be 1-D and non-empty")
    for side, ids, limit in (("source", src, source_length), ("target", tgt, target_length)):
        if limit is not None and len(ids) > limit:
            raise UserInputError(f"pair {i}: {len(ids)} {side} tokens exceed the row length "
                                 f"{limit}")
    return src, tgt


def single_pair(pair: Pair, decoder_start_id: int) -> dict[str, np.ndarray]:
    """One pair as one segment: the contract's fields, [S] and [T]."""
    src, tgt = _check_pair(pair, 0, None, None)
    return {
        "encoder_input_ids": src,
        "encoder_segment_ids": np.ones_like(src),
        "encoder_positions": np.arange(len(src), dtype=np.int32),
        "decoder_input_ids": np.concatenate([[decoder_start_id], tgt[:-1]]).astype(np.int32),
        "decoder_target_ids": tgt,
        "decoder_segment_ids": np.ones_like(tgt),
        "decoder_positions": np.arange(len(tgt), dtype=np.int32),
    }


def pack_pairs(
    pairs: Sequence[Pair],
    *,
    source_length: int,
    target_length: int,
    decoder_start_id: int,
    pad_id: int = 0,
    window: int = 64,
) -> dict[str, np.ndarray]:
    """Several pairs per row; the contract's fields, [R, source_length] / [R, target_length].

    See the module docstring for the placement rule. Pairs are never split; segment ids
    number a row's pairs 1..n in the order they were placed.
    """
    if source_length <= 0 or target_length <= 0 or window <= 0:
        raise UserInputError(f"pack lengths {source_length}/{target_length} and window "
                             f"{window} must be positive")
    checked = [_check_pair(p, i, source_length, target_length) for i, p in enumerate(pairs)]
    order = sorted(range(len(checked)), key=lambda i: -len(checked[i][0]))
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (source, target) tokens left, per row
    for i in order:
        ns, nt = len(checked[i][0]), len(checked[i][1])
        for r in range(max(0, len(rows) - window), len(rows)):
            if room[r][0] >= ns and room[r][1] >= nt:
                rows[r].append(i)
                room[r] = (room[r][0] - ns, room[r][1] - nt)
                break
        else:
            rows.append([i])
            room.append((source_length - ns, target_length - nt))

    n = len(rows)
    out = {k: np.zeros((n, source_length), np.int32) for k in ENCODER_FIELDS}  # R S
    out.update({k: np.zeros((n, target_length), np.int32) for k in DECODER_FIELDS})  # R T
    out["encoder_input_ids"][:] = pad_id
    out["decoder_input_ids"][:] = pad_id
    for r, members in enumerate(rows):
        at_s = at_t = 0
        for seg, i in enumerate(members, start=1):
            feats = single_pair({"source_ids": checked[i][0], "target_ids": checked[i][1]},
                                decoder_start_id)
            ns, nt = len(checked[i][0]), len(checked[i][1])
            for k in ENCODER_FIELDS:
                out[k][r, at_s:at_s + ns] = feats[k] if k != "encoder_segment_ids" else seg
            for k in DECODER_FIELDS:
                out[k][r, at_t:at_t + nt] = feats[k] if k != "decoder_segment_ids" else seg
            at_s, at_t = at_s + ns, at_t + nt
    return out


def padding_stats(batch: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Padding waste of (packed or padded) rows, per side: padded / all tokens."""
    out = {}
    for side in ("encoder", "decoder"):
        seg = np.asarray(batch[f"{side}_segment_ids"])
        out[f"{side}_waste"] = float(1.0 - np.count_nonzero(seg) / seg.size) if seg.size else 0.0
    return out
