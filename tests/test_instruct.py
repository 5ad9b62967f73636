"""Chapter 05: instruction data, prompt formats, masked labels + end-of-text, batching, answering, tuning."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerFast

from llm_course.infer.generation import generate
from llm_course.models.gpt import GPT, GPTConfig
from llm_course.text.tokenizer import ByteLevelBPETokenizer
from llm_course.train import instruct
from llm_course.train.instruct import (
    InstructionCollator,
    answer,
    batches,
    encode_instruction,
    exact_match,
    instruction_tune,
)
from llm_course.train.instructions import (
    CHAT_TEMPLATE,
    INSTRUCTION_TASKS,
    TASK_OPTIONS,
    TEMPLATES,
    WORD_PAIRS,
    Instruction,
    format_chat,
    format_prompt,
    make_instructions,
)
from llm_course.zoo.loading import checkpoint_dir

pytestmark = pytest.mark.usefixtures("one_thread")

EOT = "<|endoftext|>"
EN2RU = dict(WORD_PAIRS)
RU2EN = {ru: en for en, ru in WORD_PAIRS}


@pytest.fixture(scope="module")
def tok() -> ByteLevelBPETokenizer:
    return ByteLevelBPETokenizer.from_pretrained(checkpoint_dir("course-gpt"))


@pytest.fixture(scope="module")
def hf_tok() -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast.from_pretrained(str(checkpoint_dir("course-gpt")))


def tiny_gpt(seed: int = 0, vocab_size: int = 4096, n_positions: int = 128) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, n_positions=n_positions, n_embd=32, n_layer=2, n_head=2)).eval()


def constant_gpt(token_id: int) -> GPT:
    """A GPT that predicts ``token_id`` after any text: ln_f outputs a constant vector, the tied head scores it."""
    model = tiny_gpt(1)
    with torch.no_grad():
        model.ln_f.weight.zero_()
        model.ln_f.bias.copy_(model.wte.weight[token_id] * 1000)
    logits = model(torch.tensor([[5, 6, 7]])).logits[0, -1]
    assert int(logits.argmax()) == token_id
    return model


def manual_format_instruction_prompt(instruction, input_text="", output=""):
    """The manual's function (chapter 5, "Инструкт-тюнинг"), copied verbatim as the reference format."""
    if input_text:
        prompt = f"### Instruction:\n{instruction}\n\n### Input:\n{input_text}\n\n### Response:\n"
    else:
        prompt = f"### Instruction:\n{instruction}\n\n### Response:\n"
    if output:
        prompt += f"{output}"
    return prompt


def expected_output(ex: Instruction) -> str:
    """The right answer, computed independently of llm_course.text.tasks."""
    if ex.task == "reverse":
        return ex.input[::-1]
    if ex.task == "sort":
        return "".join(sorted(ex.input))
    if ex.task == "arithmetic":
        assert re.fullmatch(r"\d+[-+*]\d+", ex.input)
        return str(eval(ex.input))  # digits and one operator only (checked above)
    if ex.task == "uppercase":
        return ex.input.upper()
    if ex.task == "lowercase":
        return ex.input.lower()
    if ex.task == "count_words":
        return str(len(ex.input.split()))
    if ex.task == "translate_en_ru":
        return EN2RU[ex.input]
    if ex.task == "translate_ru_en":
        return RU2EN[ex.input]
    raise AssertionError(ex.task)


# ---------------------------------------------------------------------------------------- data


def test_examples_are_correct_balanced_and_in_both_languages() -> None:
    examples = make_instructions(320, seed=3)
    assert len(examples) == 320
    for ex in examples:
        assert ex.output == expected_output(ex), ex
        assert ex.instruction in TEMPLATES[ex.task][ex.language]
    counts = {}
    for ex in examples:
        counts[(ex.task, ex.language)] = counts.get((ex.task, ex.language), 0) + 1
    assert counts == {(t, lang): 20 for t in INSTRUCTION_TASKS for lang in ("en", "ru")}
    ru = [ex for ex in examples if ex.language == "ru"]
    assert all(re.search("[а-яё]", ex.instruction.lower()) for ex in ru)
    # short inputs, as the feasibility recipe needs
    assert max(len(ex.input) for ex in examples if ex.task in ("reverse", "sort")) <= 4


def test_test_split_is_held_out() -> None:
    train = make_instructions(4000, seed=0, split="train")
    for test_seed in (0, 7):
        test = make_instructions(400, seed=test_seed, split="test")
        train_pairs = {(ex.instruction, ex.input) for ex in train}
        assert not [ex for ex in test if (ex.instruction, ex.input) in train_pairs]
        # phrasings: test uses exactly the held-out (last) one, train never does
        assert {ex.instruction for ex in test} == {TEMPLATES[t][lang][-1] for t in INSTRUCTION_TASKS
                                                  for lang in ("en", "ru")}
        assert not {ex.instruction for ex in train} & {ex.instruction for ex in test}
        # generated tasks: inputs disjoint too
        train_inputs = {(ex.task, ex.input) for ex in train if ex.task in TASK_OPTIONS}
        test_inputs = {(ex.task, ex.input) for ex in test if ex.task in TASK_OPTIONS}
        assert test_inputs and not train_inputs & test_inputs
    # every train phrasing but the held-out one is used
    assert {ex.instruction for ex in train} == {p for t in INSTRUCTION_TASKS for lang in ("en", "ru")
                                                for p in TEMPLATES[t][lang][:-1]}


@settings(max_examples=15, deadline=None)
@given(n=st.integers(0, 60), seed=st.integers(0, 10**6), split=st.sampled_from(["train", "test"]),
       languages=st.sampled_from([("en",), ("ru",), ("en", "ru")]),
       tasks=st.sampled_from([None, ("reverse",), ("arithmetic", "translate_ru_en")]))
def test_make_instructions_is_deterministic(n, seed, split, languages, tasks) -> None:
    a = make_instructions(n, seed=seed, split=split, languages=languages, tasks=tasks)
    assert a == make_instructions(n, seed=seed, split=split, languages=languages, tasks=tasks)
    assert len(a) == n
    assert {ex.language for ex in a} <= set(languages)
    assert {ex.task for ex in a} <= set(tasks or INSTRUCTION_TASKS)


def test_different_seeds_differ() -> None:
    assert make_instructions(50, seed=0) != make_instructions(50, seed=1)


def test_word_list_round_trips_both_directions() -> None:
    assert len(WORD_PAIRS) >= 100
    assert len(EN2RU) == len(RU2EN) == len(WORD_PAIRS)  # no word occurs twice on either side
    for en, ru in WORD_PAIRS:
        assert re.fullmatch("[a-z]+", en) and re.fullmatch("[а-яё]+", ru), (en, ru)
        assert RU2EN[EN2RU[en]] == en and EN2RU[RU2EN[ru]] == ru
    both = make_instructions(400, seed=2, tasks=("translate_en_ru", "translate_ru_en"))
    for ex in both:
        if ex.task == "translate_en_ru":
            assert EN2RU[ex.input] == ex.output and RU2EN[ex.output] == ex.input
        else:
            assert RU2EN[ex.input] == ex.output and EN2RU[ex.output] == ex.input


# ---------------------------------------------------------------------------------------- formats


def test_format_prompt_is_the_manuals_alpaca_format() -> None:
    with_input = Instruction("Reverse the letters of this word.", "kqxa", "axqk", "reverse", "en")
    assert format_prompt(with_input) == manual_format_instruction_prompt(with_input.instruction, "kqxa")
    assert format_prompt(with_input).endswith("### Input:\nkqxa\n\n### Response:\n")
    no_input = Instruction("Назови столицу Франции.", "", "Париж", "qa", "ru")
    assert format_prompt(no_input) == "### Instruction:\nНазови столицу Франции.\n\n### Response:\n"
    assert format_prompt(no_input) == manual_format_instruction_prompt(no_input.instruction)


CONVERSATIONS = [
    [{"role": "user", "content": "Reverse the letters of this word.\n\nkqxa"}],
    [{"role": "system", "content": "Отвечай коротко."}, {"role": "user", "content": "Привет!"},
     {"role": "assistant", "content": "Привет."}, {"role": "user", "content": f"typed {EOT} and {{{{ x }}}} %}}"}],
    [{"role": "user", "content": ""}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_jinja_chat_template_equals_format_chat(hf_tok, messages, add_generation_prompt) -> None:
    ours = format_chat(messages, add_generation_prompt=add_generation_prompt)
    theirs = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                        chat_template=CHAT_TEMPLATE)
    assert theirs == ours
    assert ours.endswith("### Assistant:\n") == add_generation_prompt


def test_format_chat_text() -> None:
    text = format_chat([{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                        {"role": "assistant", "content": "A"}], add_generation_prompt=True)
    assert text == "### System:\nS\n\n### User:\nU\n\n### Assistant:\nA\n\n### Assistant:\n"


def test_unknown_role_is_an_error_in_both(hf_tok) -> None:
    with pytest.raises(ValueError, match="unknown role 'bot'"):
        format_chat([{"role": "bot", "content": "x"}])
    with pytest.raises(Exception, match="unknown role bot"):
        hf_tok.apply_chat_template([{"role": "bot", "content": "x"}], tokenize=False, chat_template=CHAT_TEMPLATE)


# ---------------------------------------------------------------------------------------- encoding


@pytest.mark.parametrize("template", ["alpaca", "chat"])
def test_prompt_is_masked_and_response_plus_eos_learned(tok, template) -> None:
    for ex in make_instructions(24, seed=5):
        enc = encode_instruction(tok, ex, 384, template=template)
        prompt_text = format_prompt(ex) if template == "alpaca" else format_chat(
            [{"role": "user", "content": f"{ex.instruction}\n\n{ex.input}"}])
        prompt = tok.encode(prompt_text, allowed_special="none")
        response = tok.encode(ex.output, allowed_special="none")
        assert enc["input_ids"] == prompt + response + [0]
        assert enc["labels"] == [-100] * len(prompt) + response + [0]
        assert enc["attention_mask"] == [1] * len(enc["input_ids"])
        assert enc["input_ids"][-1] == enc["labels"][-1] == tok.token_to_id(EOT)  # eos is last, and learned
        learned = [t for t in enc["labels"] if t != -100]
        assert tok.decode(learned) == ex.output + EOT
        assert tok.decode(enc["input_ids"]) == prompt_text + ex.output + EOT


def test_loss_is_the_response_tokens_cross_entropy(tok) -> None:
    """The model's loss with these labels equals cross-entropy over the response + eos positions only."""
    model = tiny_gpt(2)
    ex = make_instructions(1, seed=1)[0]
    enc = encode_instruction(tok, ex, 128)
    ids = torch.tensor([enc["input_ids"]])
    out = model(ids, labels=torch.tensor([enc["labels"]]))
    n_prompt = enc["labels"].count(-100)
    # logits at position t predict token t + 1: the first response token is predicted at n_prompt - 1
    manual = F.cross_entropy(out.logits[0, n_prompt - 1 : -1], ids[0, n_prompt:])
    torch.testing.assert_close(out.loss, manual)
    full = F.cross_entropy(out.logits[0, :-1], ids[0, 1:])  # what the manual trains on (prompt included)
    assert not torch.isclose(out.loss, full)


@pytest.mark.parametrize("template", ["alpaca", "chat"])
def test_transformers_tokenizer_gives_the_same_encoding(tok, hf_tok, template) -> None:
    for ex in make_instructions(16, seed=9):
        assert encode_instruction(hf_tok, ex, 384, template) == encode_instruction(tok, ex, 384, template)


@pytest.mark.parametrize("which", ["course", "transformers"])
def test_typed_special_token_stays_text(tok, hf_tok, which) -> None:
    tokenizer = tok if which == "course" else hf_tok
    ex = Instruction(f"Repeat {EOT} exactly.", f"a{EOT}b", f"x{EOT}y", "copy", "en")
    enc = encode_instruction(tokenizer, ex, 384)
    assert enc["input_ids"].count(0) == 1 and enc["input_ids"][-1] == 0  # only the appended eos is the token
    assert tok.decode(enc["input_ids"]) == format_prompt(ex) + ex.output + EOT
    assert tok.decode([t for t in enc["labels"] if t != -100]) == ex.output + EOT


def test_too_long_is_a_clear_error(tok) -> None:
    ex = make_instructions(1, seed=0)[0]
    total = len(encode_instruction(tok, ex, 384)["input_ids"])
    assert len(encode_instruction(tok, ex, total)["input_ids"]) == total  # an exact fit is fine
    with pytest.raises(ValueError, match="max_length"):
        encode_instruction(tok, ex, total - 1)
    with pytest.raises(ValueError, match="max_length must be an integer >= 2"):
        encode_instruction(tok, ex, 1)
    with pytest.raises(ValueError, match="output is empty"):
        encode_instruction(tok, Instruction("Do it.", "x", "", "copy"), 64)
    with pytest.raises(ValueError, match="unknown template"):
        encode_instruction(tok, ex, 384, template="vicuna")


# ---------------------------------------------------------------------------------------- batching


def test_collator_pads_right_like_transformers(tok, hf_tok) -> None:
    features = [encode_instruction(tok, ex, 384) for ex in make_instructions(5, seed=4)]
    lengths = [len(f["input_ids"]) for f in features]
    assert len(set(lengths)) > 1
    batch = InstructionCollator(pad_token_id=0)(features)
    width = max(lengths)
    for key in ("input_ids", "attention_mask", "labels"):
        assert batch[key].shape == (5, width) and batch[key].dtype == torch.long
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        assert batch["input_ids"][row, :n].tolist() == f["input_ids"]
        assert batch["labels"][row, :n].tolist() == f["labels"]
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        assert (batch["labels"][row, n:] == -100).all() and (batch["input_ids"][row, n:] == 0).all()
    # reference: transformers' DataCollatorForSeq2Seq (right padding, labels padded with -100)
    hf = hf_tok.__class__.from_pretrained(str(checkpoint_dir("course-gpt")), pad_token=EOT, padding_side="right")
    ref = DataCollatorForSeq2Seq(hf, padding=True, label_pad_token_id=-100, return_tensors="pt")(
        [dict(f) for f in features])
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(batch[key], ref[key]), key


def test_batches_cover_each_epoch_and_the_mask_changes_nothing(tok) -> None:
    examples = make_instructions(12, seed=6)
    encoded = [encode_instruction(tok, ex, 384) for ex in examples]
    get_batch = batches(encoded, batch_size=4, seed=1)
    assert torch.equal(get_batch(2)["input_ids"], batches(encoded, 4, seed=1)(2)["input_ids"])  # a function of i
    assert set(get_batch(0)) == {"input_ids", "attention_mask", "labels"}
    for epoch in range(2):
        seen = []
        for i in range(3 * epoch, 3 * epoch + 3):
            b = get_batch(i)
            for row in b["input_ids"].tolist():
                while row and row[-1] == 0 and row.count(0) > 1:  # drop right padding, keep the real eos
                    row.pop()
                seen.append(row)
        assert sorted(seen) == sorted(e["input_ids"] for e in encoded)
    # right padding: the loss is the same without the attention mask (a causal model never looks ahead)
    model = tiny_gpt(3, n_positions=384)
    masked = get_batch(0)
    assert (masked["attention_mask"] == 0).any()
    unmasked = {k: v for k, v in masked.items() if k != "attention_mask"}
    torch.testing.assert_close(model(**masked).loss, model(**unmasked).loss)


# ---------------------------------------------------------------------------------------- answering


def test_answer_returns_the_new_tokens_by_id_even_when_the_prompt_does_not_round_trip(tok) -> None:
    from tokenizers import normalizers

    backend = tok.to_hf_tokenizer()
    backend.normalizer = normalizers.NFKC()  # "ﬁ" (one character) becomes "fi" (two): decode != prompt
    nfkc = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOT)
    a_id = tok.encode("a")[0]
    model = constant_gpt(a_id)  # always says "a"
    ex = Instruction("Write ﬁve ﬁsh.", "", "?", "copy", "en")
    got = answer(model, nfkc, [ex], max_new_tokens=5)
    assert got == ["aaaaa"]
    # the string-cutting shortcut is wrong here: the decoded prompt is two characters longer
    prompt = format_prompt(ex)
    ids = nfkc(prompt, add_special_tokens=False)["input_ids"]
    full = generate(model, torch.tensor([ids]), max_new_tokens=5, eos_token_id=0)
    assert nfkc.decode(full[0].tolist())[len(prompt):] != got[0]
    # a model that says end-of-text at once answers ""
    assert answer(constant_gpt(0), tok, [ex, ex], max_new_tokens=5) == ["", ""]


def test_answer_batches_with_left_padding_like_one_at_a_time(tok) -> None:
    model = tiny_gpt(4, n_positions=384)
    examples = make_instructions(7, seed=8)
    batched = answer(model, tok, examples, max_new_tokens=6, batch_size=4)
    for ex, got in zip(examples, batched):
        ids = tok.encode(format_prompt(ex), allowed_special="none")
        new = generate(model, torch.tensor([ids]), max_new_tokens=6, eos_token_id=0)[0, len(ids):].tolist()
        new = new[: new.index(0)] if 0 in new else new
        assert got == tok.decode(new)


def test_exact_match_scores_per_task_and_language(tok) -> None:
    model = constant_gpt(tok.encode("a")[0])  # answers "aaa" with max_new_tokens=3
    examples = [
        Instruction("i", "x", "aaa", "reverse", "en"),
        Instruction("i", "x", " aaa\n", "reverse", "ru"),  # surrounding white space is ignored
        Instruction("i", "x", "aa", "sort", "en"),
        Instruction("i", "x", "aaa", "sort", "en"),
        Instruction("i", "x", "bbb", "sort", "ru"),
    ]
    r = exact_match(model, tok, examples, max_new_tokens=3)
    assert r["predictions"] == ["aaa"] * 5
    assert r["n"] == 5 and r["accuracy"] == pytest.approx(3 / 5)
    assert r["by_task"] == {"reverse": 1.0, "sort": pytest.approx(1 / 3)}
    assert r["by_language"] == {"en": pytest.approx(2 / 3), "ru": 0.5}
    assert r["by_task_language"] == {"reverse/en": 1.0, "reverse/ru": 1.0, "sort/en": 0.5, "sort/ru": 0.0}


# ---------------------------------------------------------------------------------------- training


MEMO = [
    Instruction("Reverse the letters of this word.", "abc", "cba", "reverse", "en"),
    Instruction("Переверни буквы в этом слове.", "dog", "god", "reverse", "ru"),
    Instruction("Calculate.", "2+3", "5", "arithmetic", "en"),
    Instruction("Переведи это слово на русский.", "cat", "кошка", "translate_en_ru", "ru"),
]
STEPS = 80


def test_instruction_tuning_teaches_answers_and_stopping(tok) -> None:
    model = tiny_gpt(5)
    before = exact_match(model, tok, MEMO, max_new_tokens=12)
    assert before["accuracy"] == 0.0 and before["stopped"] < 1.0
    result = instruction_tune(model, tok, MEMO, steps=STEPS, batch_size=4, lr=1e-2, max_length=128,
                              eval_examples=MEMO, progress=False)
    assert result.step == STEPS and result.evals and result.evals[-1]["loss"] < 0.1
    after = exact_match(model, tok, MEMO, max_new_tokens=12)
    assert after["predictions"] == [ex.output for ex in MEMO]  # right, and stopped right after
    assert after["accuracy"] == 1.0 and after["stopped"] == 1.0


def test_the_manuals_recipe_never_learns_to_stop(tok) -> None:
    """ERRATA 5: loss on prompt + answer, no end-of-text: the same model and budget answer, then ramble."""
    model = tiny_gpt(5)
    rows = [tok.encode(format_prompt(ex) + ex.output, allowed_special="none") for ex in MEMO]
    width = max(len(r) for r in rows)
    # the manual's labels: everything, prompt included (padding masked only so that shapes line up)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    labels = torch.tensor([r + [-100] * (width - len(r)) for r in rows])
    from llm_course.train.loop import TrainConfig, train

    cfg = TrainConfig(max_steps=STEPS, lr=1e-2, min_lr=1e-3, warmup_steps=STEPS // 10, weight_decay=0.0,
                      progress=False, log_interval=0, live_plot=False, seed=0)
    train(model, lambda i: {"input_ids": ids, "labels": labels}, cfg)
    r = exact_match(model, tok, MEMO, max_new_tokens=12)
    assert r["stopped"] == 0.0 and r["accuracy"] == 0.0
    assert all(p.startswith(ex.output) and len(p) > len(ex.output) for p, ex in zip(r["predictions"], MEMO))


def test_answer_works_the_same_with_transformers_models(tok, hf_tok) -> None:
    model = tiny_gpt(6, n_positions=384)
    examples = make_instructions(5, seed=11)
    ours = answer(model, tok, examples, max_new_tokens=5, batch_size=2)
    hf_model = model.to_hf().eval()
    assert answer(hf_model, hf_tok, examples, max_new_tokens=5, batch_size=2) == ours
    # and the same first training step (loss on the response tokens) through transformers' model
    ours_result = instruction_tune(model, tok, examples, steps=2, batch_size=5, progress=False)
    theirs_result = instruction_tune(hf_model, hf_tok, examples, steps=2, batch_size=5, progress=False)
    assert ours_result.step == theirs_result.step == 2
    assert ours_result.losses[0] == pytest.approx(theirs_result.losses[0], rel=1e-4)


# ---------------------------------------------------------------------------------------- bad input


def test_bad_inputs_are_clear_errors(tok) -> None:
    with pytest.raises(ValueError, match="n must be a non-negative integer"):
        make_instructions(-1)
    with pytest.raises(TypeError, match="n must be a non-negative integer, got str"):
        make_instructions("10")
    with pytest.raises(ValueError, match="split must be one of 'train', 'test', got 'val'"):
        make_instructions(5, split="val")
    with pytest.raises(ValueError, match="languages: unknown 'de'"):
        make_instructions(5, languages=("de",))
    with pytest.raises(ValueError, match="tasks: unknown 'poetry'"):
        make_instructions(5, tasks=("poetry",))
    with pytest.raises(ValueError, match="tasks is empty"):
        make_instructions(5, tasks=())
    with pytest.raises(ValueError, match="seed"):
        make_instructions(5, seed=-2)
    model = tiny_gpt(0)
    for fn in (answer, exact_match):
        with pytest.raises(ValueError, match="no examples"):
            fn(model, tok, [])
    with pytest.raises(ValueError, match="no examples"):
        instruction_tune(model, tok, [], steps=1)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        instruction_tune(model, tok, MEMO, steps=0)
    with pytest.raises(ValueError, match="no encoded examples"):
        batches([], 4)
    with pytest.raises(ValueError, match="batch_size"):
        batches([{"input_ids": [1], "labels": [1]}], 0)
    with pytest.raises(ValueError, match="empty list"):
        InstructionCollator(0)([])
    with pytest.raises(ValueError, match="pad_token_id"):
        InstructionCollator(-1)
    with pytest.raises(TypeError, match="Instruction"):
        format_prompt({"instruction": "x", "input": "", "output": "y"})
    with pytest.raises(ValueError, match="instruction text is empty"):
        format_prompt(Instruction("  ", "x", "y", "copy"))
    with pytest.raises(ValueError, match="messages is empty"):
        format_chat([])
    with pytest.raises(ValueError, match="end-of-text"):
        instruct.eos_token_id(ByteLevelBPETokenizer.train(["abc abd"], vocab_size=260, special_tokens=()))
