r"""`sft-jax`: one command, a subcommand per job.

    sft-jax train --config=configs/classification.py --workdir=/tmp/run [--config.KEY=VALUE]
    sft-jax eval --config=configs/classification.py --model=minilm-l6 --workdir=/tmp/before
    sft-jax predict --model=/tmp/chat/export --prompt="Any plans tonight?"
    sft-jax assets list | fetch NAME
    sft-jax sweep --config=configs/classification.py --sweep=experiments/sweeps/lr_seeds.py \
        --workdir=/tmp/lr
    sft-jax report /tmp/lr

`sft-jax SUBCOMMAND --help` describes one with an example. Each subcommand is a module
that also runs as `python -m MODULE` (listed below). Bad input, an unknown subcommand
or flag included, prints one `error:` line and exits with status 2.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from typing import NoReturn

# subcommand -> (module with run(), what it does)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("sft_jax.main", "fine-tune a model on a task config; evaluate and export it"),
    "eval": ("sft_jax.evaluation", "evaluate a model (asset, HF directory, a run's export/ "
                                   "or best/) without training"),
    "predict": ("sft_jax.predict", "generate replies with a decoder-only model: a prompt, "
                                   "a JSONL file or a chat"),
    "assets": ("sft_jax.assets.__main__", "list the packaged models and corpora, or fetch "
                                          "one into the cache"),
    "sweep": ("sft_jax.sweep", "run many training runs from one sweep file (resumable)"),
    "report": ("sft_jax.report", "compare the runs under a directory: tables with mean ± "
                                 "std, intervals and plots"),
}

HELP_ARGS = ("-h", "--help", "--helpshort", "help")


def fail(message: str, status: int = 2) -> NoReturn:
    """A command's one-line error: `error: <message>` on stderr, then exit `status`."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def wants_help(argv: Iterable[str]) -> bool:
    return any(arg in HELP_ARGS for arg in argv)


def usage() -> str:
    lines = [__doc__.strip().split("\n\n")[0], "", "subcommands:"]
    width = max(map(len, SUBCOMMANDS))
    for name, (_, what) in SUBCOMMANDS.items():
        lines.append(f"  {name:{width}}  {what}")
    lines += ["", __doc__.strip().split("\n\n")[1]]
    return "\n".join(lines)


def flags_help(doc: str, names: Iterable[str], extra: Iterable[str] = (),
               **described: str) -> str:
    """A command's `--help`: the first two paragraphs of its docstring (what it does, an
    example), its absl flags `names` with their help (or `described[name]`) and defaults,
    then the `extra` lines."""
    from absl import flags

    lines = ["\n\n".join(doc.strip().split("\n\n")[:2]), "", "flags:"]
    for name in names:
        if name in flags.FLAGS:
            flag = flags.FLAGS[name]
            default = "" if flag.default in (None, "", [], -1) else \
                f" (default: {flag.default})"
            lines.append(f"  --{name}: {described.get(name, flag.help)}{default}")
    lines.extend(f"  {line}" for line in extra)
    return "\n".join(lines)


def run() -> None:
    """Entry point of the installed `sft-jax` script."""
    args = sys.argv[1:]
    if not args:
        print(usage(), file=sys.stderr)
        sys.exit(2)
    if args[0] in HELP_ARGS:
        print(usage())
        sys.exit(0)
    name = args[0]
    if name not in SUBCOMMANDS:
        fail(f"unknown subcommand {name!r} (known: {', '.join(SUBCOMMANDS)}; see sft-jax "
             f"--help)")
    module = importlib.import_module(SUBCOMMANDS[name][0])
    sys.argv = [f"sft-jax {name}", *args[1:]]
    status = module.run()
    sys.exit(status or 0)


if __name__ == "__main__":
    run()
