"""Talk to a decoder-only model: one prompt, a JSONL file of prompts, or an interactive chat.

    python -m sft_jax.predict --model=workdirs/chat/export --prompt="Any plans tonight?"
    python -m sft_jax.predict --model=smollm2-135m-instruct --prompts=in.jsonl --output=out.jsonl
    python -m sft_jax.predict --model=workdirs/chat/export --chat

`--model` is a Hugging Face directory (e.g. a run's `export/`) or an asset name. JSONL
records are `{"prompt": str}` or `{"messages": [{"role", "content"}, ...]}`; each output
line is the record plus `"response"`. Bad input exits with status 2 and one line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax

from sft_jax import decoding
from sft_jax.errors import UserInputError
from sft_jax.models import registry


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 8
    stop_tokens: tuple[str, ...] = ()  # besides the tokenizer's EOS, e.g. "<|im_end|>"


class ChatModel:
    """A decoder LM + its tokenizer's chat template -> replies, with the KV-cache decoder."""

    def __init__(self, module, module_config, params, tokenizer, chat_template: str | None = None):
        self.module, self.config, self.params = module, module_config, params
        self.tokenizer, self.template = tokenizer, chat_template
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else tokenizer.eos_token_id)

    def step(self, params, input_ids, positions, segment_ids, cache):
        out = self.module.apply({"params": params}, input_ids, positions=positions,
                                segment_ids=segment_ids, cache=cache)
        return out["logits"], out["cache"]

    def init_cache(self, batch: int, max_length: int):
        return registry.init_cache(self.config, batch, max_length)

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The conversation rendered up to and including the assistant's turn header."""
        if self.template is None and not getattr(self.tokenizer, "chat_template", None):
            text = "\n".join(m["content"] for m in messages)
            return list(self.tokenizer(text)["input_ids"])
        return list(self.tokenizer.apply_chat_template(
            messages, chat_template=self.template, add_generation_prompt=True, tokenize=True,
            return_dict=False))

    def respond(self, conversations: Sequence[list[dict]], sampling: Sampling,
                params: Any = None) -> list[str]:
        stops = set(self.tokenizer.convert_tokens_to_ids(list(sampling.stop_tokens)))
        stops |= {self.tokenizer.eos_token_id}
        stops -= {None, self.tokenizer.unk_token_id}
        generated = decoding.generate(
            self.step, self.params if params is None else params, self.init_cache,
            [self.prompt_ids(m) for m in conversations],
            max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
            top_k=sampling.top_k, top_p=sampling.top_p, stop_token_ids=sorted(stops),
            pad_id=self.pad_id, rng=jax.random.key(sampling.seed),
            batch_size=min(sampling.batch_size, max(len(conversations), 1)),
        )
        return [self.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in generated]


def load_chat_model(path_or_asset: str, chat_template: str | None = None) -> ChatModel:
    from sft_jax.pretrained import load_pretrained

    model = load_pretrained(path_or_asset)
    if registry.family_of(model.config).kind != "decoder":
        raise UserInputError(f"--model: {path_or_asset} is not a decoder-only model")
    return ChatModel(model.module, model.config, model.params, model.tokenizer, chat_template)


def _conversation(record: dict, where: str) -> list[dict]:
    if isinstance(record.get("messages"), list):
        return record["messages"]
    if isinstance(record.get("prompt"), str):
        return [{"role": "user", "content": record["prompt"]}]
    raise UserInputError(f"{where}: a record needs 'prompt' (a string) or 'messages'")


def _read_prompts(path: Path) -> list[tuple[dict, list[dict]]]:
    from sft_jax.data.sources import read_records

    out = []
    for record in read_records(str(path), config_key="--prompts"):
        where = record.pop("_where")
        out.append((record, _conversation(record, where)))
    return out


def _chat_loop(model: ChatModel, sampling: Sampling, system: str | None) -> None:
    history = [{"role": "system", "content": system}] if system else []
    print("Chat: empty line or Ctrl-D to quit.", file=sys.stderr)
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            break
        if not text:
            break
        history.append({"role": "user", "content": text})
        reply = model.respond([history], sampling)[0]
        history.append({"role": "assistant", "content": reply})
        print(f"model> {reply}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sft_jax.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="HF directory or asset name")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="one user message")
    source.add_argument("--prompts", type=Path, help="JSONL of {prompt} or {messages}")
    source.add_argument("--chat", action="store_true", help="interactive chat")
    parser.add_argument("--output", type=Path, help="JSONL output (default: stdout)")
    parser.add_argument("--system", help="system message for --prompt and --chat")
    parser.add_argument("--chat_template", help="override the tokenizer's chat template")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top_k", type=int, default=0)
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--stop_token", action="append", default=["<|im_end|>"],
                        help="extra stop token (repeatable)")
    args = parser.parse_args(argv)
    sampling = Sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                        args.seed, args.batch_size, tuple(args.stop_token))
    try:
        model = load_chat_model(args.model, args.chat_template)
        if args.chat:
            _chat_loop(model, sampling, args.system)
            return 0
        if args.prompt is not None:
            system = [{"role": "system", "content": args.system}] if args.system else []
            items = [({"prompt": args.prompt}, [*system, {"role": "user",
                                                           "content": args.prompt}])]
        else:
            items = _read_prompts(args.prompts)
        replies = model.respond([conv for _, conv in items], sampling)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = args.output.open("w") if args.output else sys.stdout
    try:
        for (record, _), reply in zip(items, replies, strict=True):
            out.write(json.dumps({**record, "response": reply}, ensure_ascii=False) + "\n")
    finally:
        if args.output:
            out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
