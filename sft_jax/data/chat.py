"""SFT examples for decoder-only models: records → `input_ids` and a `loss_mask`.

Records (from `sources.read_records`, each with its place `_where`) come in three forms:
    {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
    {"prompt": str, "completion": str, "system"?: str}
    {"prompt": [messages], "completion": [messages]}     (TRL's conversational form)
With a chat template (the tokenizer's own, or a template string given as `chat_template`)
every record is rendered as a conversation by the tokenizer's `apply_chat_template`; a
string prompt/completion becomes `[system?, user: prompt, assistant: completion]`.
Without one, only a single exchange (a user prompt and an assistant completion, no
system) is accepted and rendered as plain text: `tokenizer(prompt)` (with the
tokenizer's own special tokens, e.g. BOS, as at inference) + `tokenizer(completion)`
(none) + EOS, each part tokenised on its own.

`loss_mask[t] = 1` marks token t as a *target*: the model is trained to predict it from
the tokens before it (so `loss_mask[0]` is always 0). `loss_on` chooses the targets:
    assistant   every assistant message
    last_turn   the last assistant message only
    completion  the completion (prompt/completion records only; an error on `messages`)
    all         every token
An assistant message's targets are its content and its end-of-turn token (`<|im_end|>`,
`</s>`, `<|eot_id|>`...), never its role header: with the header in the generation prompt
(`add_generation_prompt=True`) the model reads it at inference, it does not write it.

How the assistant tokens are found. If the template marks them with `{% generation %}`
(and the tokenizer is a fast one), the tokenizer's `return_assistant_tokens_mask` is used.
Otherwise each assistant message i is located by rendering prefixes of the conversation:
`messages[:i]` with the generation prompt (ends with the assistant header) and
`messages[:i+1]` (ends after the message). Both are tokenised and checked, token by token,
to be prefixes of the whole conversation's ids; the message's tokens lie between them,
cut after the last special token (the end of turn) when only whitespace follows it (the
template's separator, e.g. `"\\n"`). A template that renders a turn differently depending on
what follows (e.g. one that drops reasoning from earlier turns), or a tokenizer that merges
across the boundary, breaks the prefix property: that record fails with a UserInputError
naming it and the template, instead of silently training on the wrong tokens.

Truncation keeps the first `max_length` tokens, with the mask cut alike.
`encode_examples` drops examples left without targets and reports how many.
"""

from __future__ import annotations

import bisect
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from sft_jax.errors import UserInputError

log = logging.getLogger(__name__)

LossOn = Literal["assistant", "all", "completion", "last_turn"]
LOSS_ON: tuple[str, ...] = ("assistant", "all", "completion", "last_turn")
ROLES: tuple[str, ...] = ("system", "user", "assistant")
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def _where(record: Mapping[str, Any], where: str | None) -> str:
    return where if where is not None else str(record.get("_where", "record"))


def _check_messages(messages: Any, field: str, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise UserInputError(f"{where}: {field!r} must be a non-empty list of messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise UserInputError(f"{where}: {field}[{i}] must be an object with 'role' and "
                                 "'content'")
        if m["role"] not in ROLES:
            raise UserInputError(f"{where}: {field}[{i}] has role {m['role']!r}; expected one "
                                 f"of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise UserInputError(f"{where}: {field}[{i}].content must be a string")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def conversation(record: Mapping[str, Any], *, where: str | None = None
                 ) -> tuple[list[dict[str, str]], int | None]:
    """`(messages, completion_start)` of a record; `completion_start` is the index of the
    first completion message, None for a `messages` record."""
    where = _where(record, where)
    if "messages" in record:
        return _check_messages(record["messages"], "messages", where), None
    if "prompt" not in record or "completion" not in record:
        keys = sorted(k for k in record if not k.startswith("_"))
        raise UserInputError(f"{where}: a record needs 'messages', or 'prompt' and "
                             f"'completion'; it has {keys}")
    prompt, completion = record["prompt"], record["completion"]
    if isinstance(prompt, list) and isinstance(completion, list):
        prompt = _check_messages(prompt, "prompt", where)
        return prompt + _check_messages(completion, "completion", where), len(prompt)
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise UserInputError(f"{where}: 'prompt' and 'completion' must both be strings or "
                             "both be lists of messages")
    messages = []
    if record.get("system") is not None:
        if not isinstance(record["system"], str):
            raise UserInputError(f"{where}: 'system' must be a string")
        messages.append({"role": "system", "content": record["system"]})
    messages += [{"role": "user", "content": prompt},
                 {"role": "assistant", "content": completion}]
    return messages, len(messages) - 1


def resolve_template(tokenizer: Any, chat_template: str | None) -> str | None:
    """The template string in use: `chat_template`, else the tokenizer's, else None."""
    if chat_template is not None:
        return chat_template
    own = getattr(tokenizer, "chat_template", None)
    if not own:
        return None
    return tokenizer.get_chat_template() if isinstance(own, Mapping) else own


def _template_name(tokenizer: Any, chat_template: str | None) -> str:
    if chat_template is not None:
        return "the chat template given (chat_template)"
    name = getattr(tokenizer, "name_or_path", "")
    return f"the chat template of tokenizer {name}" if name else "the tokenizer's chat template"


def _special_ids(tokenizer: Any) -> set[int]:
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    for i, token in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(token, "special", False):
            ids.add(int(i))
    return ids


class _Renderer:
    """Renders and tokenises (prefixes of) one conversation with one template.

    Tokenising the rendered text with `add_special_tokens=False` is what
    `apply_chat_template(tokenize=True)` does."""

    def __init__(self, tokenizer: Any, template: str, where: str, name: str):
        self.tokenizer, self.template, self.where, self.name = tokenizer, template, where, name

    def _apply(self, messages: list[dict], **kwargs) -> Any:
        import jinja2

        try:
            return self.tokenizer.apply_chat_template(messages, chat_template=self.template,
                                                      **kwargs)
        except jinja2.TemplateError as err:
            raise UserInputError(f"{self.where}: {self.name} rejected the conversation: "
                                 f"{err}") from None

    def text(self, messages: list[dict], *, generation_prompt: bool = False) -> str:
        return self._apply(messages, add_generation_prompt=generation_prompt, tokenize=False)

    def tagged(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        """Ids and the `{% generation %}` mask of the whole conversation."""
        out = self._apply(messages, tokenize=True, return_dict=True,
                          return_assistant_tokens_mask=True)
        return [int(i) for i in out["input_ids"]], [int(bool(m)) for m in out["assistant_masks"]]

    def tokenize(self, texts: list[str], offsets: bool = False) -> dict:
        if not texts:
            return {"input_ids": [], "offset_mapping": []}
        return self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=offsets)

    def check_prefix(self, ids: list[int], full: list[int], what: str) -> int:
        if ids != full[: len(ids)]:
            at = next((k for k, (a, b) in enumerate(zip(ids, full, strict=False)) if a != b),
                      min(len(ids), len(full)))
            raise UserInputError(
                f"{self.where}: {self.name} does not render {what} as a token prefix of the "
                f"whole conversation (they differ at token {at}), so the assistant tokens "
                "cannot be found; use a template with {% generation %} markers, or "
                "loss_on='all'")
        return len(ids)


def _end_of_turn(ids: list[int], start: int, end: int, special: set[int], tokenizer: Any
                 ) -> int:
    """The end of an assistant message's targets in ids[start:end]: just after its last
    special token (the end of turn) when only whitespace follows it (the template's
    separator, e.g. "\n"); otherwise `end` (a template whose turns end in plain text)."""
    last = max((t for t in range(start, end) if ids[t] in special), default=None)
    if last is None or tokenizer.decode(ids[last + 1:end]).strip():
        return end
    return last + 1


def _encode_plain(messages: list[dict], tokenizer: Any, loss_on: str, where: str
                  ) -> tuple[list[int], list[int]]:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise UserInputError(f"{where}: the tokenizer has no EOS token to end the completion "
                             "with (and no chat template)")
    prompt = list(tokenizer(messages[0]["content"], add_special_tokens=True)["input_ids"])
    completion = list(tokenizer(messages[1]["content"], add_special_tokens=False)["input_ids"])
    ids = prompt + completion + [int(eos)]
    mask = [int(loss_on == "all")] * len(prompt) + [1] * (len(completion) + 1)
    return ids, mask


def _encode(record: Mapping[str, Any], tokenizer: Any, *, chat_template: str | None,
            loss_on: str, where: str, max_length: int | None
            ) -> tuple[list[int], list[int]]:
    """Untruncated `(ids, mask)` lists; see the module docstring. With `max_length` (and a
    fast tokenizer), turns starting past it are not located (they are cut off anyway)."""
    if loss_on not in LOSS_ON:
        raise UserInputError(f"loss_on={loss_on!r}: expected one of {', '.join(LOSS_ON)}")
    messages, completion_start = conversation(record, where=where)
    if loss_on == "completion" and completion_start is None:
        raise UserInputError(f"{where}: loss_on='completion' needs prompt/completion records; "
                             "use 'assistant' or 'last_turn' for 'messages'")
    template = resolve_template(tokenizer, chat_template)
    if template is None:
        if [m["role"] for m in messages] != ["user", "assistant"]:
            raise UserInputError(f"{where}: only a plain prompt/completion can do without a "
                                 "chat template (no system, no multi-turn); the tokenizer "
                                 f"{getattr(tokenizer, 'name_or_path', '')!r} has none (pass "
                                 "chat_template)")
        return _encode_plain(messages, tokenizer, loss_on, where)

    render = _Renderer(tokenizer, template, where, _template_name(tokenizer, chat_template))
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if loss_on == "last_turn":
        turns = turns[-1:]
    elif loss_on == "completion":
        turns = [i for i in turns if i >= completion_start]
    if turns and turns[0] == 0:
        raise UserInputError(f"{where}: the conversation starts with an assistant message; "
                             "it must start with a system or user message")
    fast = bool(getattr(tokenizer, "is_fast", False))
    if loss_on != "all" and fast and _GENERATION_TAG.search(template) is not None:
        ids, mask = render.tagged(messages)
        if loss_on != "assistant" and turns:  # only from the first chosen turn on
            before = render.tokenize([render.text(messages[: turns[0]],
                                                  generation_prompt=True)])["input_ids"][0]
            start = render.check_prefix(list(before), ids, f"messages[:{turns[0]}] + the "
                                        "generation prompt")
            mask[:start] = [0] * start
        return ids, mask if turns else [0] * len(ids)

    text = render.text(messages)
    full = render.tokenize([text], offsets=fast)
    ids = [int(i) for i in full["input_ids"][0]]
    if loss_on == "all":
        return ids, [1] * len(ids)
    token_starts = [s for s, _ in full["offset_mapping"][0]] if fast else None
    spans = []  # (turn, text before its content, text through its end)
    for i in turns:
        before = render.text(messages[:i], generation_prompt=True)
        if (max_length is not None and token_starts is not None and text.startswith(before)
                and bisect.bisect_left(token_starts, len(before)) >= max_length):
            break  # this turn and the later ones are cut off by truncation
        spans.append((i, before, render.text(messages[: i + 1])))
    prefixes = render.tokenize([t for _, before, after in spans for t in (before, after)])
    prefixes = [list(p) for p in prefixes["input_ids"]]
    special = _special_ids(tokenizer)
    mask = [0] * len(ids)
    for k, (i, _, _) in enumerate(spans):
        start = render.check_prefix(prefixes[2 * k], ids,
                                    f"messages[:{i}] + the generation prompt")
        end = render.check_prefix(prefixes[2 * k + 1], ids, f"messages[:{i + 1}]")
        end = _end_of_turn(ids, start, end, special, tokenizer)
        mask[start:end] = [1] * (end - start)
    return ids, mask


def _finish(ids: list[int], mask: list[int], max_length: int | None
            ) -> dict[str, np.ndarray]:
    if max_length is not None:
        if max_length < 2:
            raise UserInputError(f"max_length={max_length}: must be at least 2")
        ids, mask = ids[:max_length], mask[:max_length]
    loss_mask = np.asarray(mask, np.int32)
    if len(loss_mask):
        loss_mask[0] = 0  # the first token has nothing to be predicted from
    return {"input_ids": np.asarray(ids, np.int32), "loss_mask": loss_mask}


def encode_example(
    record: Mapping[str, Any],
    tokenizer: Any,
    *,
    chat_template: str | None = None,
    loss_on: LossOn = "assistant",
    max_length: int | None = None,
    where: str | None = None,
) -> dict[str, np.ndarray]:
    """One record → `{"input_ids": int32 [T], "loss_mask": int32 [T]}`, T ≤ max_length.

    `chat_template` overrides the tokenizer's template (None: the tokenizer's, or plain
    text when it has none). `where` names the record in errors (default its `_where`).
    The result may have no targets left after truncation; `encode_examples` drops those.
    """
    ids, mask = _encode(record, tokenizer, chat_template=chat_template, loss_on=loss_on,
                        where=_where(record, where), max_length=max_length)
    return _finish(ids, mask, max_length)


def encode_examples(
    records: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    *,
    chat_template: str | None = None,
    loss_on: LossOn = "assistant",
    max_length: int | None = None,
) -> tuple[list[dict[str, np.ndarray]], dict[str, int]]:
    """Encode every record; drop those without targets (after truncation).

    Returns `(examples, stats)`, stats `{"records", "examples", "truncated", "dropped"}`
    (`truncated` counts the kept examples cut to `max_length`); drops are logged.
    """
    examples, truncated, dropped = [], 0, 0
    for record in records:
        ids, mask = _encode(record, tokenizer, chat_template=chat_template, loss_on=loss_on,
                            where=_where(record, None), max_length=max_length)
        ex = _finish(ids, mask, max_length)
        if not ex["loss_mask"].any():
            dropped += 1
            continue
        truncated += int(len(ex["input_ids"]) < len(ids))
        examples.append(ex)
    stats = {"records": len(records), "examples": len(examples), "truncated": truncated,
             "dropped": dropped}
    if dropped:
        log.warning("%d of %d examples have no loss tokens (loss_on=%r, max_length=%s) and "
                    "were dropped", dropped, len(records), loss_on, max_length)
    return examples, stats
