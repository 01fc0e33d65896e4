"""The acceptance targets of `benchmark.py` and its markdown report, from results.json."""

from __future__ import annotations

from typing import Any

TRAIN_GOAL, TRAIN_STRETCH, DECODE_GOAL, PACKING_GOAL = 1.0, 1.5, 1.5, 2.0
# The warm-up step's loss, ours vs eager PyTorch (same weights and batch), relative.
FIRST_LOSS_TOLERANCE = {"float32": 1e-3, "bfloat16": 3e-2, "float16": 3e-2}


def targets(r: dict) -> list[dict]:
    """[{name, value, goal, met}]: ours/theirs ratios of this run against the goals."""
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, goal: float, higher: bool = True) -> None:
        met = value is not None and (value >= goal if higher else value < goal)
        out.append({"name": name, "value": value, "goal": goal, "met": bool(met)})

    for row in r["train"]:
        label = f"train {row['model']} {row['batch']}x{row['seq']} {row['dtype']}"
        add(f"{label}: ours/torch eager tokens/s", row.get("ratio_vs_eager"), TRAIN_GOAL)
        if row.get("ratio_vs_compile") is not None:
            add(f"{label}: ours/torch.compile tokens/s", row["ratio_vs_compile"], TRAIN_GOAL)
        if row.get("first_loss_rel_diff") is not None:
            add(f"{label}: first-step loss, ours vs eager (relative difference)",
                row["first_loss_rel_diff"], FIRST_LOSS_TOLERANCE[row["dtype"]], higher=False)
    for row in r["decode"]:
        add(f"decode batch {row['batch']}: ours/transformers tokens/s", row["ratio"],
            DECODE_GOAL)
    if r.get("packing"):
        add(f"packing/padding effective tokens/s ({r['packing']['source']}, "
            f"L={r['packing']['max_length']})", r["packing"]["ratio"], PACKING_GOAL)
    for row in r["same_loss"]:
        add(f"same loss {row['model']}: max relative difference over {row['steps']} steps",
            row["max_rel_diff"], row["tolerance"], higher=False)
    mfu_missing = [row["model"] for row in r["train"]
                   for s in row["sides"].values() if "tokens_per_s" in s and s.get("mfu") is None]
    out.append({"name": "MFU reported for every training row", "value": len(mfu_missing),
                "goal": 0, "met": not mfu_missing})
    return out


def _f(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def _mb(x: int | None) -> str:
    return "–" if x is None else f"{x / 2**20:,.0f}"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(r) + " |" for r in rows], ""]


def _side(row: dict, side: str, key: str, fmt=_f) -> str:
    s = row["sides"].get(side)
    if s is None:
        return "not run"
    if "error" in s:
        return "error"
    return fmt(s.get(key))


def _cpu_line(cpu: dict | None) -> str:
    if not cpu:
        return "CPU: not recorded."
    present = ", ".join(f for f, on in cpu["flags"].items() if on) or "none"
    absent = ", ".join(f for f, on in cpu["flags"].items() if not on) or "none"
    return f"CPU: {cpu['model']}; lscpu flags present: {present}; absent: {absent}."


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"# Benchmark: suite `{r['suite']}`", "", f"Command: `{r['command']}`  ",
             f"Started {r['started']}, wall time {r.get('wall_s', 0):.0f} s.  ",
             f"Machine: {m['backend']} ({m['device']}, {m['processor'] or m['platform']}), "
             f"{m['cpus']} CPUs, {m['threads']} threads for each side; XLA_FLAGS="
             f"`{m['xla_flags'] or '(none)'}`; jax {m['versions']['jax']}, torch "
             f"{m['versions']['torch']}, transformers {m['versions']['transformers']}.  ",
             _cpu_line(m.get("cpu")), ""]
    p = r.get("peak")
    if p:
        lines += [f"Peak matmul ({p['dtype']}, {p['n']}×{p['n']}, best of the repeats): JAX "
                  f"{p['flops_per_s'] / 1e9:,.1f} GFLOP/s, torch "
                  f"{p['torch_flops_per_s'] / 1e9:,.1f} GFLOP/s. MFU = model FLOPs/s ÷ the "
                  "JAX figure.", ""]
    if r["train"]:
        lines += ["## Training step (AdamW, same weights and batch)", ""]
        rows = []
        for row in r["train"]:
            rows.append([
                row["model"], row["dtype"], f"{row['batch']}×{row['seq']}",
                f"{row['params'] / 1e6:.1f}M",
                _side(row, "ours", "tokens_per_s", lambda x: _f(x, 0)),
                _side(row, "ours", "nonpad_tokens_per_s", lambda x: _f(x, 0)),
                _side(row, "torch_eager", "tokens_per_s", lambda x: _f(x, 0)),
                _f(row.get("ratio_vs_eager")),
                _side(row, "torch_compile", "tokens_per_s", lambda x: _f(x, 0)),
                _f(row.get("ratio_vs_compile")),
                _side(row, "ours", "step_s_median", lambda x: _f(1e3 * x, 0)),
                " / ".join(_side(row, s, "compile_s", lambda x: _f(x, 1))
                           for s in ("ours", "torch_eager", "torch_compile")),
                " / ".join(_side(row, s, "peak_rss_bytes", _mb)
                           for s in ("ours", "torch_eager")),
                " / ".join(_side(row, s, "mfu", _pct) for s in ("ours", "torch_eager")),
                " / ".join(_side(row, s, "first_loss", lambda x: _f(x, 4))
                           for s in ("ours", "torch_eager")),
            ])
        lines += _table(["model", "dtype", "B×T", "params", "ours tok/s", "ours non-pad tok/s",
                         "eager tok/s", "ours/eager", "compile tok/s", "ours/compile",
                         "ours step ms", "compile s (ours/eager/compiled)",
                         "peak RSS MiB (ours/eager)", "MFU (ours/eager)",
                         "first-step loss (ours/eager)"], rows)
        errors = [(row["model"], k, s["error"]) for row in r["train"]
                  for k, s in row["sides"].items() if "error" in s]
        lines += [f"- {mdl} {side}: {err}" for mdl, side, err in errors]
        lines += [""] if errors else []
    if r["same_loss"]:
        lines += ["## Same loss (fp32, 20 AdamW steps, identical weights and batches)", ""]
        lines += _table(["model", "B×T", "lr", "loss step 1 → 20 (ours)", "max rel. diff",
                         "passed"],
                        [[x["model"], f"{x['batch']}×{x['seq']}", f"{x['lr']:g}",
                          f"{x['ours'][0]:.4f} → {x['ours'][-1]:.4f}",
                          f"{x['max_rel_diff']:.1e}", "yes" if x["passed"] else "NO"]
                         for x in r["same_loss"]])
    pk = r.get("packing")
    if pk:
        lines += [f"## Packing vs padding ({pk['source']}, {pk['examples']} examples, "
                  f"L={pk['max_length']}, {pk['batch']} rows per step)", "",
                  "Example lengths (tokens) p10/p50/p90: "
                  + "/".join(f"{v:.0f}" for v in pk["length_percentiles"].values())
                  + f"; {_pct(pk['truncated_fraction'])} longer than L.", ""]
        lines += _table(["layout", "batches/epoch", "fill", "epoch s (est.)",
                         "effective tok/s", "MFU"],
                        [[k, str(pk[k]["batches"]), _pct(pk[k]["fill"]), _f(pk[k]["epoch_s"], 1),
                          _f(pk[k]["effective_tokens_per_s"], 0), _pct(pk[f"mfu_{k}"])]
                         for k in ("padding", "packing")])
        lines += [f"Ratio packing/padding: **{pk['ratio']:.2f}×**. Fill at other lengths "
                  "(non-padding fraction, padding → packing): "
                  + "; ".join(f"L={k}: {_pct(v['padding'])} → {_pct(v['packing'])} "
                              f"({v['fill_ratio']:.2f}×)" for k, v in pk["fill_at"].items())
                  + ".", ""]
    if r["decode"]:
        d0 = r["decode"][0]
        lines += [f"## Greedy decoding ({d0['prompt_len']}-token prompts, "
                  f"{d0['new_tokens']} new tokens)", ""]
        lines += _table(["batch", "ours tok/s", "transformers tok/s", "ours/transformers",
                         "ours first call s (compile)", "MFU (ours/theirs)",
                         "rows with identical tokens"],
                        [[str(x["batch"]), _f(x["ours"]["tokens_per_s"], 1),
                          _f(x["torch"]["tokens_per_s"], 1), _f(x["ratio"]),
                          _f(x["ours"]["first_s"], 1),
                          f"{_pct(x['ours']['mfu'])} / {_pct(x['torch']['mfu'])}",
                          _pct(x["same_tokens_fraction"])] for x in r["decode"]])
    if r["scaling"]:
        lines += ["## Scaling (ours)", ""]
        lines += _table(["B", "T", "layers", "remat", "step ms", "tok/s", "MFU",
                         "XLA peak MiB", "compile s"],
                        [[str(x["batch"]), str(x["seq"]), str(x["layers"]), x["remat"],
                          _f(x["step_s_median"] and 1e3 * x["step_s_median"], 0),
                          _f(x.get("tokens_per_s"), 0), _pct(x.get("mfu")),
                          _mb((x["memory"] or {}).get("total")), _f(x["compile_s"], 1)]
                         for x in r["scaling"]])
    if r.get("replicas"):
        lines += ["## Replicas in one program vs sequential runs (`train.replicas=K`)", "",
                  "Same config and updates per replica; wall = process wall time summed over "
                  "the side's processes (start-up, loading, compilation included); train = "
                  "seconds in the training loop.", ""]
        lines += _table(["run", "K", "steps × batch", "wall s (one / sequential)",
                         "wall speed-up", "train ex/s (one / sequential)", "train speed-up",
                         "peak RSS MiB (one / largest sequential)"],
                        [[x["name"], str(x["replicas"]), f"{x['steps']} × {x['batch']}",
                          f"{_f(x['one_program']['wall_s'], 0)} / "
                          f"{_f(x['sequential']['wall_s'], 0)}",
                          f"{_f(x['wall_speedup'])}×",
                          f"{_f(x['one_program']['examples_per_s'], 1)} / "
                          f"{_f(x['sequential']['examples_per_s'], 1)}",
                          f"{_f(x['train_speedup'])}×",
                          f"{_mb(x['one_program']['peak_rss_bytes'])} / "
                          f"{_mb(x['sequential']['peak_rss_bytes'])}"]
                         for x in r["replicas"]])
    lines += ["## Targets", ""]
    lines += _table(["target", "value", "goal", "met"],
                    [[t["name"], _f(t["value"], 6 if t["goal"] < 1e-2 else 2), f"{t['goal']:g}",
                      "yes" if t["met"] else "no"] for t in r["targets"]])
    for key in ("pending", "errors"):
        if r.get(key):
            lines += [f"{key.capitalize()}:", *[f"- {x}" for x in r[key]], ""]
    return "\n".join(lines)
