"""`sft_jax.data.chat`: conversations → input_ids + loss_mask, with self-made tokenizers.

The tokenizer is a tiny byte-level BPE (GPT-2/SmolLM2 style) trained here, with ChatML
and Llama-2 special tokens; the templates are SmolLM2's ChatML template, the same with
`{% generation %}` markers, and Llama-2's `[INST]` template.
"""

from __future__ import annotations

import numpy as np
import pytest

from sft_jax.data import chat
from sft_jax.errors import UserInputError

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>", "</s>"]

# HuggingFaceTB/SmolLM2-135M-Instruct tokenizer_config.json "chat_template".
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# The same rendering, with the assistant content and <|im_end|> inside {% generation %}.
TAGGED_TEMPLATE = SMOLLM2_TEMPLATE.replace(
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}",
    "{{'<|im_start|>' + message['role'] + '\n'}}{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{% else %}"
    "{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}",
)
# meta-llama/Llama-2-7b-chat-hf tokenizer_config.json "chat_template".
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}"
    "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)
# Renders every turn with the number of messages: earlier turns change as turns are added.
UNSTABLE_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' of ' "
    "+ (messages|length|string) + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Turns that end in plain text: the whole reply, with its newline, is the target.
PLAIN_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ 'User: ' + m['content'] + '\n' }}"
    "{% elif m['role'] == 'assistant' %}{{ 'Assistant: ' + m['content'] + '\n' }}"
    "{% else %}{{ m['content'] + '\n\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

CORPUS = [
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    "Hello, how are you? I am fine, thank you! What is the capital of France?",
    "The capital of France is Paris. Tell me a joke. Why did the chicken cross the road?",
    "system user assistant Be brief. Two plus two is four. [INST] [/INST] <<SYS>>",
]

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "Tell me a joke."},
    {"role": "assistant", "content": "Why did the chicken cross the road?"},
]


@pytest.fixture(scope="module")
def backend():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 3, trainer)
    return tok


def make_tokenizer(backend, template: str | None, **special):
    import transformers

    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"], **special)
    tokenizer.chat_template = template
    return tokenizer


@pytest.fixture(scope="module")
def smollm2(backend):
    return make_tokenizer(backend, SMOLLM2_TEMPLATE, eos_token="<|im_end|>",
                          bos_token="<|im_start|>")


@pytest.fixture(scope="module")
def llama2(backend):
    return make_tokenizer(backend, LLAMA2_TEMPLATE, eos_token="</s>", bos_token="<s>")


def masked_runs(tokenizer, example) -> list[str]:
    """The decoded runs of consecutive target tokens."""
    runs, current = [], []
    for token, m in zip(example["input_ids"], example["loss_mask"], strict=True):
        if m:
            current.append(int(token))
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(r) for r in runs]


def test_prompt_completion_with_chatml_trains_on_the_reply_and_im_end(smollm2):
    record = {"prompt": "Tell me a joke.", "completion": "Why did the chicken cross the road?",
              "_where": "a.jsonl:1"}
    ex = chat.encode_example(record, smollm2)
    assert ex["input_ids"].dtype == np.int32 and ex["loss_mask"].dtype == np.int32
    messages = [{"role": "user", "content": record["prompt"]},
                {"role": "assistant", "content": record["completion"]}]
    assert ex["input_ids"].tolist() == list(smollm2.apply_chat_template(messages)["input_ids"])
    assert masked_runs(smollm2, ex) == ["Why did the chicken cross the road?<|im_end|>"]
    # Not the header, not the newline after <|im_end|>.
    assert smollm2.decode(ex["input_ids"][-1:]) == "\n" and ex["loss_mask"][-1] == 0
    start = int(np.argmax(ex["loss_mask"]))
    assert smollm2.decode(ex["input_ids"][:start]).endswith("<|im_start|>assistant\n")


def test_multi_turn_loss_on_choices(smollm2):
    record = {"messages": CONVERSATION, "_where": "b.jsonl:3"}
    both = chat.encode_example(record, smollm2, loss_on="assistant")
    assert masked_runs(smollm2, both) == ["Paris.<|im_end|>",
                                         "Why did the chicken cross the road?<|im_end|>"]
    last = chat.encode_example(record, smollm2, loss_on="last_turn")
    assert masked_runs(smollm2, last) == ["Why did the chicken cross the road?<|im_end|>"]
    every = chat.encode_example(record, smollm2, loss_on="all")
    assert every["loss_mask"].tolist() == [0] + [1] * (len(every["input_ids"]) - 1)
    np.testing.assert_array_equal(every["input_ids"], both["input_ids"])
    with pytest.raises(UserInputError, match=r"b\.jsonl:3: loss_on='completion' needs"):
        chat.encode_example(record, smollm2, loss_on="completion")
    with pytest.raises(UserInputError, match="loss_on='everything'"):
        chat.encode_example(record, smollm2, loss_on="everything")


def test_conversational_prompt_completion_trains_on_the_completion_only(smollm2):
    record = {"prompt": CONVERSATION[:4], "completion": CONVERSATION[4:]}
    ex = chat.encode_example(record, smollm2, loss_on="completion")
    assert masked_runs(smollm2, ex) == ["Why did the chicken cross the road?<|im_end|>"]
    both = chat.encode_example(record, smollm2, loss_on="assistant")
    assert len(masked_runs(smollm2, both)) == 2


def test_generation_markers_agree_with_prefix_rendering(smollm2):
    record = {"messages": CONVERSATION}
    for loss_on in ("assistant", "last_turn"):
        by_prefix = chat.encode_example(record, smollm2, loss_on=loss_on)
        by_tags = chat.encode_example(record, smollm2, chat_template=TAGGED_TEMPLATE,
                                      loss_on=loss_on)
        np.testing.assert_array_equal(by_tags["input_ids"], by_prefix["input_ids"])
        np.testing.assert_array_equal(by_tags["loss_mask"], by_prefix["loss_mask"])
    # The markers decide: here they leave <|im_end|> out.
    content_only = TAGGED_TEMPLATE.replace(
        "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}",
        "{% generation %}{{ message['content'] }}{% endgeneration %}{{ '<|im_end|>' }}")
    ex = chat.encode_example(record, smollm2, chat_template=content_only, loss_on="last_turn")
    assert masked_runs(smollm2, ex) == ["Why did the chicken cross the road?"]


def test_llama2_template(llama2):
    record = {"messages": CONVERSATION, "_where": "c.jsonl:9"}
    ex = chat.encode_example(record, llama2)
    text = llama2.decode(ex["input_ids"])
    assert text.startswith("<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhat is the capital")
    assert masked_runs(llama2, ex) == [" Paris. </s>", " Why did the chicken cross the road? </s>"]
    plain = {"prompt": "Tell me a joke.", "completion": "Two plus two is four."}
    assert masked_runs(llama2, chat.encode_example(plain, llama2)) == [
        " Two plus two is four. </s>"]
    bad = {"messages": [CONVERSATION[1], CONVERSATION[1]], "_where": "c.jsonl:10"}
    with pytest.raises(UserInputError, match=r"c\.jsonl:10: .*rejected.*must alternate"):
        chat.encode_example(bad, llama2)


def test_template_with_plain_text_turns(smollm2):
    ex = chat.encode_example({"messages": CONVERSATION}, smollm2, chat_template=PLAIN_TEMPLATE)
    assert smollm2.decode(ex["input_ids"]).startswith("Be brief.\n\nUser: What is")
    assert masked_runs(smollm2, ex) == [" Paris.\n", " Why did the chicken cross the road?\n"]
    # A generation prompt ending in a space is a text prefix, but " Why" is one token in
    # the conversation and " " + "Why" after the prompt: caught token by token.
    spaced = PLAIN_TEMPLATE.replace("'Assistant:' }}{% endif %}", "'Assistant: ' }}{% endif %}")
    with pytest.raises(UserInputError, match=r"g:1: .*messages\[:4\] \+ the generation "
                                             r"prompt as a token prefix"):
        chat.encode_example({"messages": CONVERSATION, "_where": "g:1"}, smollm2,
                            chat_template=spaced)


def test_template_without_the_prefix_property_is_an_error(smollm2):
    record = {"messages": CONVERSATION, "_where": "d.jsonl:2"}
    with pytest.raises(UserInputError,
                       match=r"d\.jsonl:2: the chat template given .* token prefix"):
        chat.encode_example(record, smollm2, chat_template=UNSTABLE_TEMPLATE)
    # Training on everything does not need the assistant tokens.
    ex = chat.encode_example(record, smollm2, chat_template=UNSTABLE_TEMPLATE, loss_on="all")
    assert ex["loss_mask"][1:].all()


def test_truncation_keeps_the_mask_aligned_and_drops_examples_without_targets(smollm2):
    record = {"messages": CONVERSATION}
    full = chat.encode_example(record, smollm2)
    second = np.flatnonzero(full["loss_mask"])[-1] - 5  # inside the second reply
    cut = chat.encode_example(record, smollm2, max_length=int(second))
    np.testing.assert_array_equal(cut["input_ids"], full["input_ids"][:second])
    np.testing.assert_array_equal(cut["loss_mask"], full["loss_mask"][:second])
    first = int(np.argmax(full["loss_mask"]))  # before any reply: nothing to learn
    records = [record, {"messages": CONVERSATION, "_where": "x"}, record]
    examples, stats = chat.encode_examples(records, smollm2, max_length=first, loss_on="last_turn")
    assert examples == [] and stats == {"records": 3, "examples": 0, "truncated": 0,
                                        "dropped": 3}
    examples, stats = chat.encode_examples(records, smollm2, max_length=int(second))
    assert stats == {"records": 3, "examples": 3, "truncated": 3, "dropped": 0}
    assert all(len(ex["input_ids"]) == second for ex in examples)


def test_plain_prompt_completion_without_a_template(backend):
    tokenizer = make_tokenizer(backend, None, eos_token="<|endoftext|>")
    record = {"prompt": "What is the capital of France?", "completion": " Paris."}
    ex = chat.encode_example(record, tokenizer)
    prompt = tokenizer(record["prompt"])["input_ids"]
    completion = tokenizer(record["completion"], add_special_tokens=False)["input_ids"]
    assert ex["input_ids"].tolist() == [*prompt, *completion, tokenizer.eos_token_id]
    assert ex["loss_mask"].tolist() == [0] * len(prompt) + [1] * (len(completion) + 1)
    every = chat.encode_example(record, tokenizer, loss_on="all")
    assert every["loss_mask"].tolist() == [0] + [1] * (len(every["input_ids"]) - 1)
    with pytest.raises(UserInputError, match=r"e\.jsonl:4: .*chat template"):
        chat.encode_example({"messages": CONVERSATION, "_where": "e.jsonl:4"}, tokenizer)
    no_eos = make_tokenizer(backend, None)
    with pytest.raises(UserInputError, match="no EOS token"):
        chat.encode_example(record, no_eos)


@pytest.mark.parametrize(("record", "message"), [
    ({"text": "hi"}, r"f\.jsonl:1: a record needs 'messages', or 'prompt' and 'completion'"),
    ({"messages": []}, r"f\.jsonl:1: 'messages' must be a non-empty list"),
    ({"messages": [{"role": "bot", "content": "x"}]}, r"messages\[0\] has role 'bot'"),
    ({"messages": [{"role": "user", "content": 3}]}, r"messages\[0\]\.content must be a str"),
    ({"messages": [{"role": "user"}]}, r"messages\[0\] must be an object with 'role'"),
    ({"prompt": "a", "completion": ["b"]}, "both be strings or both be lists"),
    ({"messages": [{"role": "assistant", "content": "Hi"}]}, "starts with an assistant"),
])
def test_bad_records_name_their_place(smollm2, record, message):
    with pytest.raises(UserInputError, match=message):
        chat.encode_example({**record, "_where": "f.jsonl:1"}, smollm2)


def test_real_smollm2_tokenizer():
    """The real SmolLM2 tokenizer and ChatML template (the `smollm2-135m-instruct` asset)."""
    import transformers

    from sft_jax import assets

    path = assets.fetch("smollm2-135m-instruct")

    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    ex = chat.encode_example({"messages": CONVERSATION}, tokenizer)
    assert masked_runs(tokenizer, ex) == ["Paris.<|im_end|>",
                                          "Why did the chicken cross the road?<|im_end|>"]
