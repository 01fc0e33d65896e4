"""Talk to a decoder-only model: one prompt, a JSONL file of prompts, or an interactive chat.

    sft-jax predict --model=workdirs/chat/export --prompt="Any plans tonight?"
    sft-jax predict --model=smollm2-135m-instruct --prompts=in.jsonl --output=out.jsonl
    sft-jax predict --model=workdirs/chat/export --chat

`--model` is a Hugging Face directory (e.g. a run's `export/`) or an asset name. JSONL
records are `{"prompt": str}` or `{"messages": [{"role", "content"}, ...]}`; each output
line is the record plus `"response"`. Bad input exits with status 2 and one line.
The generation itself is `sft_jax.generation.ChatModel`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from sft_jax.errors import UserInputError
from sft_jax.generation import ChatModel, Sampling, load_chat_model


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


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, status 2 (argparse adds the usage)
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="sft-jax predict", description=__doc__,
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
    sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                        max_new_tokens=args.max_new_tokens, seed=args.seed,
                        batch_size=args.batch_size, stop_tokens=tuple(args.stop_token))
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


def run() -> int:
    """Entry point of `sft-jax predict` and `python -m sft_jax.predict`."""
    return main()


if __name__ == "__main__":
    sys.exit(run())
