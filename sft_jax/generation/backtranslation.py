"""Back-translation: paraphrases of classification training text through a pivot language.

Each source text goes English -> `data.bt_pivot` -> English with a decoder-only LM
(`data.bt_model`, default the `gemma3-270m` asset, a multilingual base model) prompted by
a few-shot translation prompt (`prompt`: "Translate <source> to <target>.", three
sentence pairs of `FEW_SHOT` as "<Language>: <sentence>" lines, blank-line separated,
then the text and the target language's label). Decoding is greedy
(`generation.loop.generate`), `data.bt_batch_size` texts per call (the last batch filled
with finished dummy rows, so one program serves every batch of a prompt bucket), at most
`data.bt_max_new_tokens` tokens per translation, stopping at EOS or at any token whose
text holds a newline; the output is cut at its first newline and stripped. A newline
inside a source text is read as a space in the prompt. A text whose pivot translation
comes out empty gets an empty paraphrase (no second call).

Cache: `cache_file(cache_dir, settings)` is one JSONL per hash of (model, pivot, the two
prompt templates, decoding settings), one line `{"text", "pivot_text", "paraphrase"}` per
source text. Only texts the file lacks are generated, shortest first, and each batch's
lines are appended as soon as it is done (a stopped run loses at most one batch; an
unfinished last line is ignored). A second run with the same settings loads nothing but
the file. `data.bt_cache` names the directory ("" = WORKDIR/augment/), so the runs of a
sweep can share one. Under several processes each one generates (greedy: the same
result) and process 0 alone writes the file.

`augment_records(records, data, workdir)` is the training-split hook: each record, then a
copy with its paraphrase in `data.text_field` (label and other fields kept, `_where`
suffixed " (backtranslation)"), unless the paraphrase is empty or `same_text` as the
source; returns the records and the stats `train/paraphrases` (kept) and
`train/paraphrases_dropped` (empty or identical). The list is a function of (records,
cache), so a resumed run sees the same examples; the training order stays the
pipeline's, seeded by `seed`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import jax
import ml_collections

from sft_jax import console, storage
from sft_jax.errors import UserInputError
from sft_jax.generation import loop
from sft_jax.generation.chat import ChatModel
from sft_jax.generation.sampling import stop_token_ids
from sft_jax.models import registry

log = logging.getLogger(__name__)

SOURCE = "English"
# Three English sentences and their translations, per pivot language (data.bt_pivot).
_ENGLISH = ("The film is a delight from start to finish.",
            "The plot makes no sense, and the actors look bored.",
            "It's a smart, funny movie that never talks down to its audience.")
FEW_SHOT: dict[str, tuple[str, str, str]] = {
    "Spanish": ("La película es una delicia de principio a fin.",
                "La trama no tiene sentido y los actores parecen aburridos.",
                "Es una película inteligente y divertida que nunca trata a su público con "
                "condescendencia."),
    "French": ("Le film est un délice du début à la fin.",
               "L'intrigue n'a aucun sens et les acteurs ont l'air de s'ennuyer.",
               "C'est un film intelligent et drôle qui ne prend jamais son public de haut."),
    "German": ("Der Film ist von Anfang bis Ende ein Vergnügen.",
               "Die Handlung ergibt keinen Sinn, und die Schauspieler wirken gelangweilt.",
               "Es ist ein kluger, witziger Film, der sein Publikum nie von oben herab "
               "behandelt."),
    "Italian": ("Il film è una delizia dall'inizio alla fine.",
                "La trama non ha senso e gli attori sembrano annoiati.",
                "È un film intelligente e divertente che non tratta mai il pubblico con "
                "sufficienza."),
    "Portuguese": ("O filme é uma delícia do início ao fim.",
                   "O enredo não faz sentido e os atores parecem entediados.",
                   "É um filme inteligente e divertido que nunca trata o público com "
                   "condescendência."),
}
PIVOTS = tuple(FEW_SHOT)


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a back-translation depends on (the cache key) and how it is batched."""

    model: str  # an asset name, or a model directory's absolute path
    pivot: str
    max_new_tokens: int
    batch_size: int = 16  # not in the key: greedy rows do not depend on their batch

    @classmethod
    def from_config(cls, data: ml_collections.ConfigDict) -> Settings:
        """The settings of `data.bt_*`; UserInputError naming the key for an unknown
        pivot or a model that is neither a directory nor an asset."""
        if data.bt_pivot not in FEW_SHOT:
            raise UserInputError(f"data.bt_pivot: {data.bt_pivot!r} has no few-shot prompt "
                                 f"(known: {', '.join(PIVOTS)})")
        model = str(data.bt_model)
        if not _is_asset(model):
            model = str(_model_dir(model).resolve())
        return cls(model, str(data.bt_pivot), int(data.bt_max_new_tokens),
                   int(data.bt_batch_size))

    def key(self) -> str:
        """12 hex digits of sha256 over the model, pivot, both prompts and decoding."""
        spec = {"model": self.model, "pivot": self.pivot, "decoding": "greedy",
                "max_new_tokens": self.max_new_tokens,
                "prompts": [prompt(SOURCE, self.pivot, "{text}"),
                            prompt(self.pivot, SOURCE, "{text}")]}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def prompt(source: str, target: str, text: str) -> str:
    """The few-shot prompt translating `text` from `source` to `target` (language names,
    English or a key of FEW_SHOT): three example pairs, then the text; the model's
    continuation up to its first newline is the translation."""
    sentences = {SOURCE: _ENGLISH, **FEW_SHOT}
    shots = "".join(f"{source}: {a}\n{target}: {b}\n\n"
                    for a, b in zip(sentences[source], sentences[target], strict=True))
    return (f"Translate {source} to {target}.\n\n{shots}"
            f"{source}: {' '.join(text.splitlines())}\n{target}:")


def same_text(a: str, b: str) -> bool:
    """Whether two texts have the same words: lower case, word characters only."""
    return _words(a) == _words(b)


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def cache_file(cache_dir: str | Path, settings: Settings):
    """The cache file of `settings` in `cache_dir` (local or remote)."""
    return storage.path(cache_dir) / f"backtranslation-{settings.key()}.jsonl"


def read_cache(path) -> dict[str, dict]:
    """text -> its line of a cache file (none when absent); lines that are not whole
    JSON objects with the three fields (a write cut short) are skipped."""
    if not storage.is_file(path):
        return {}
    rows = {}
    with storage.open_text(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and all(isinstance(row.get(k), str)
                                             for k in ("text", "pivot_text", "paraphrase")):
                rows[row["text"]] = row
    return rows


class Translator:
    """A decoder LM that translates batches of single-line texts by few-shot prompting."""

    def __init__(self, settings: Settings):
        from sft_jax.pretrained import check_model_files, load_pretrained

        model_dir = _model_dir(settings.model)
        try:
            check_model_files(model_dir)
        except UserInputError as err:
            raise UserInputError(f"data.bt_model: {err}") from None
        model = load_pretrained(model_dir)
        if registry.family_of(model.config).kind != "decoder":
            raise UserInputError(f"data.bt_model: {settings.model} is not a decoder-only "
                                 "model (back-translation prompts a causal LM)")
        self.settings, self.tokenizer = settings, model.tokenizer
        self.model = ChatModel(model.module, model.config, model.params, model.tokenizer)
        self.stops = sorted(set(stop_token_ids(self.tokenizer))
                            | set(_newline_ids(str(model_dir), self.tokenizer)))

    def close(self) -> None:
        """Frees the weights (the compiled generation programs keep the model object)."""
        self.model.params = None

    def translate(self, texts: Sequence[str], source: str, target: str) -> list[str]:
        """Each text's translation (one line, stripped; "" for an empty text)."""
        todo = [i for i, t in enumerate(texts) if t.strip()]
        out = [""] * len(texts)
        if not todo:
            return out
        prompts = [list(self.tokenizer(prompt(source, target, texts[i]))["input_ids"])
                   for i in todo]
        model = self.model
        generated = loop.generate(
            model.step, model.params, model.init_cache, prompts,
            max_new_tokens=self.settings.max_new_tokens, stop_token_ids=self.stops,
            pad_id=model.pad_id, batch_size=self.settings.batch_size)
        for i, ids in zip(todo, generated, strict=True):
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            out[i] = text.split("\n", 1)[0].strip()
        return out


_NEWLINES: dict[str, tuple[int, ...]] = {}  # model directory -> its newline token ids


def _newline_ids(model_dir: str, tokenizer) -> tuple[int, ...]:
    """Ids of the tokens whose text holds a newline (any tokenizer kind), once per
    model directory and process."""
    if model_dir not in _NEWLINES:
        ids = [[i] for i in range(len(tokenizer))]
        backend = getattr(tokenizer, "backend_tokenizer", None)  # a fast tokenizer's
        texts = backend.decode_batch(ids) if backend is not None else \
            tokenizer.batch_decode(ids)
        _NEWLINES[model_dir] = tuple(i for i, text in enumerate(texts) if "\n" in text)
    return _NEWLINES[model_dir]


def _is_asset(name: str) -> bool:
    from sft_jax import assets

    return assets.is_asset(name)


def _model_dir(model: str) -> Path:
    from sft_jax.pretrained import resolve_model_dir

    try:
        return resolve_model_dir(model)
    except UserInputError as err:
        raise UserInputError(f"data.bt_model: {err}") from None


def paraphrases(texts: Iterable[str], settings: Settings, cache_dir: str | Path
                ) -> dict[str, dict]:
    """text -> its cache line, for every text; the missing ones generated and appended
    (see the module docstring)."""
    path = cache_file(cache_dir, settings)
    rows = read_cache(path)
    texts = list(dict.fromkeys(texts))
    missing = sorted((t for t in texts if t not in rows), key=len)
    started = time.perf_counter()
    if missing:
        log.info("backtranslation: %d of %d texts not in %s; generating them with %s",
                 len(missing), len(texts), path, settings.model)
        translator = Translator(settings)
        try:
            _generate(translator, missing, path, rows)
        finally:
            translator.close()
    log.info("backtranslation (%s via %s): %d texts, %d generated in %s, %d from %s",
             settings.model, settings.pivot, len(texts), len(missing),
             console.duration(time.perf_counter() - started), len(texts) - len(missing), path)
    return rows


def _generate(translator: Translator, missing: Sequence[str], path, rows: dict) -> None:
    """Back-translates `missing` batch by batch into `rows`, each batch appended to the
    cache file `path` (process 0) as soon as it is done."""
    settings, writer = translator.settings, None
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        _end_last_line(path)
        writer = storage.AppendLines(path)
    starts = range(0, len(missing), settings.batch_size)
    for start in console.progress(starts, "backtranslation", total=len(starts)):
        batch = missing[start:start + settings.batch_size]
        pivot = translator.translate(batch, SOURCE, settings.pivot)
        back = translator.translate(pivot, settings.pivot, SOURCE)
        new = [{"text": t, "pivot_text": p, "paraphrase": b}
               for t, p, b in zip(batch, pivot, back, strict=True)]
        rows.update((r["text"], r) for r in new)
        if writer is not None:
            writer.append("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in new))


def _end_last_line(path) -> None:
    """Ends a file cut short mid-line with a newline, so that appended lines stay whole."""
    if storage.is_file(path):
        with path.open("rb") as f:
            data = f.read()
        if data and not data.endswith(b"\n"):
            storage.AppendLines(path).append("\n")


def augment_records(records: Sequence[dict], data: ml_collections.ConfigDict,
                    workdir: str | Path) -> tuple[list[dict], dict[str, int]]:
    """Training records, each followed by its paraphrase (see the module docstring), and
    the stats {"train/paraphrases", "train/paraphrases_dropped"}."""
    settings = Settings.from_config(data)
    cache_dir = data.bt_cache or storage.path(workdir) / "augment"
    field = data.text_field
    rows = paraphrases((str(r[field]) for r in records), settings, cache_dir)
    out, dropped = [], 0
    for record in records:
        out.append(record)
        text = str(record[field])
        paraphrase = rows[text]["paraphrase"]
        if not _words(paraphrase) or same_text(paraphrase, text):
            dropped += 1
            continue
        copy = {**record, field: paraphrase}
        if "_where" in record:
            copy["_where"] = f"{record['_where']} (backtranslation)"
        out.append(copy)
    return out, {"train/paraphrases": len(records) - dropped,
                 "train/paraphrases_dropped": dropped}
