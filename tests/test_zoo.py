"""The model zoo (chapter 04): shipped checkpoints load both ways, reproduce their metrics, fail clearly.

Tests on a shipped checkpoint skip with a message when its folder is absent (llm_course/checkpoints/NAME).
The tiny-recipe tests train a real (few-step) checkpoint end to end and always run.
"""

import dataclasses
import json
import math
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.version import Version

from llm_course.core import paths
from llm_course.infer.generation import generate
from llm_course.models.bert import BERT
from llm_course.models.gpt import GPT
from llm_course.text.manpages import MANPAGES_DIR
from llm_course.text.tokenizer import ByteLevelBPETokenizer
from llm_course.train.recipe import PretrainRecipe
from llm_course.zoo import build, loading, recipes

# from_pretrained's dtype= is called torch_dtype= before transformers 4.56 (the floor, 4.50, takes dtype= for a
# config attribute and then fails to print the config)
FLOAT32 = ({"dtype": torch.float32} if Version(transformers.__version__).release >= (4, 56)
           else {"torch_dtype": torch.float32})

ROOT = Path(__file__).resolve().parent.parent
HAVE_MANPAGES = MANPAGES_DIR.is_dir() and len(list(MANPAGES_DIR.glob("man*/*"))) > 150
needs_manpages = pytest.mark.skipif(
    not HAVE_MANPAGES, reason=f"Debian's Russian manual pages are not in {MANPAGES_DIR}: apt-get install manpages-ru")
QUICK_MODEL_TARGET_BPC = 2.36  # notebook 04's quick GPT must reach this; the shipped one must beat it clearly

RUSSIAN = ["Привет! Как дела?", "Я люблю программировать на Python.", "Что такое язык программирования?",
           "Ёлка, щука, объём, съёмка — буквы ё, щ, ъ."]


def _shipped(name: str) -> Path:
    folder = paths.CHECKPOINTS_DIR / name
    if not (folder / "config.json").is_file():
        pytest.skip(f"checkpoint {name} is not shipped ({folder} missing): make it with "
                    f"`llm-course zoo train {name} --out {folder}`")
    return folder


@pytest.fixture(scope="module")
def gpt_dir() -> Path:
    return _shipped("course-gpt")


@pytest.fixture(scope="module")
def bert_dir() -> Path:
    return _shipped("course-bert")


@pytest.fixture(scope="module")
def gpt(gpt_dir):
    return loading.load_pretrained("course-gpt")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A real checkpoint made by train_checkpoint from a TINY override recipe (a few steps)."""
    out = tmp_path_factory.mktemp("zoo") / "tiny-gpt"
    return build.train_checkpoint(
        "course-gpt", out, progress=False, max_steps=4, warmup_steps=1, vocab_size=300, n_layer=1, n_head=2,
        n_embd=32, block_size=32, batch_size=4, max_train_chars=30_000, eval_interval=2, eval_steps=1,
        max_val_chars=5000, val_slice_chars=300, threads=None, corpus="docs",
    )


def _read(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------
# The registry and the packaging
# --------------------------------------------------------------------------------------------


def test_registry_has_the_pretrained_and_tuned_recipes():
    assert {"course-gpt", "course-bert", "course-gpt-chat"} <= set(recipes.ZOO)
    assert recipes.ZOO["course-gpt"].kind == "causal-lm" and recipes.ZOO["course-bert"].kind == "masked-lm"
    chat = recipes.ZOO["course-gpt-chat"]
    assert isinstance(chat, recipes.TunedRecipe) and chat.base == "course-gpt"
    for recipe in recipes.ZOO.values():
        if isinstance(recipe, recipes.TunedRecipe):
            assert recipe.base in recipes.ZOO and isinstance(recipes.ZOO[recipe.base], PretrainRecipe)
    assert set(loading.shipped_names()) <= set(recipes.ZOO)
    with pytest.raises(ValueError, match="kind"):
        PretrainRecipe(name="x", kind="seq2seq", description="")
    with pytest.raises(ValueError, match="divisible"):
        recipes.ZOO["course-gpt"].replace(n_head=7)


def test_package_data_patterns_cover_every_shipped_file():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pytest brings tomli
        import tomli as tomllib

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["llm_course"]
    package = ROOT / "llm_course"
    covered = {p for pattern in patterns for p in package.glob(pattern)}
    for name in loading.shipped_names():
        for f in (paths.CHECKPOINTS_DIR / name).iterdir():
            assert f in covered, f"{f} would be left out of the wheel by {patterns}"
        assert not [f for f in (paths.CHECKPOINTS_DIR / name).iterdir() if f.suffix in recipes.PICKLE_SUFFIXES]


def test_every_zoo_recipe_is_shipped_and_all_of_them_fit_in_25_mb():
    """The wheel carries every checkpoint the zoo names (no download, ever), and they stay small (issue 21)."""
    assert set(loading.shipped_names()) == set(recipes.ZOO)
    total = sum(f.stat().st_size for name in recipes.ZOO for f in (paths.CHECKPOINTS_DIR / name).iterdir())
    assert total < 25 * 2**20, f"shipped checkpoints: {total / 2**20:.1f} MiB"


@pytest.mark.parametrize("name", ["course-gpt", "course-bert"])
def test_shipped_recipe_json_matches_the_registry_and_is_complete(name):
    folder = _shipped(name)
    recipe = _read(folder, "recipe.json")
    assert recipe["recipe"] == dataclasses.asdict(recipes.ZOO[name])  # what is shipped is what the zoo says
    assert PretrainRecipe(**recipe["recipe"]) == recipes.ZOO[name]  # and it rebuilds the recipe, field for field
    config = recipes.ZOO[name].model_config(recipe["model_config"]["vocab_size"])
    assert recipe["model_config"] == dataclasses.asdict(config)  # the shape made the shipped model's config
    assert loading.read_recipe(name) == recipe and loading.read_metrics(name) == _read(folder, "metrics.json")
    for key in ("seed", "torch", "transformers", "train_seconds", "wall_seconds", "data", "parameters", "steps"):
        assert key in recipe, key
    assert recipe["steps"] == recipes.ZOO[name].max_steps
    metrics = _read(folder, "metrics.json")
    assert metrics["weights_dtype"] == "float16"
    size = (folder / "model.safetensors").stat().st_size
    assert size < 2.2 * metrics["parameters"] + 100_000  # float16: 2 bytes per parameter (+ header)
    assert 0.5e6 < metrics["parameters"] < 4e6


# --------------------------------------------------------------------------------------------
# course-gpt
# --------------------------------------------------------------------------------------------


def test_gpt_loads_both_ways_with_equal_logits(gpt, gpt_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = gpt
    assert isinstance(model, GPT) and isinstance(tok, ByteLevelBPETokenizer) and not model.training
    hf = AutoModelForCausalLM.from_pretrained(gpt_dir, **FLOAT32)  # plain transformers
    hf_tok = AutoTokenizer.from_pretrained(gpt_dir)
    text = "Return a list of the words in the string, using sep as the delimiter. Привет, мир!"
    ids = tok.encode(text)
    assert hf_tok(text)["input_ids"] == ids
    x = torch.tensor([ids])
    with torch.no_grad():
        ours, theirs = model(x).logits, hf(x).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    hf2, tok2 = loading.load_pretrained("course-gpt", as_course_model=False)
    assert type(hf2).__name__ == "GPT2LMHeadModel" and hf2.dtype == torch.float32
    assert tok2(text)["input_ids"] == ids


def test_gpt_recorded_validation_loss_is_reproduced_from_the_shipped_weights(gpt, gpt_dir):
    from transformers import AutoModelForCausalLM

    metrics, recipe = _read(gpt_dir, "metrics.json"), _read(gpt_dir, "recipe.json")["recipe"]
    sl = metrics["val_slice"]
    assert sl["chars"] == len(sl["text"]) >= 1000
    model, tok = gpt
    measured = build.slice_loss(model, tok, sl["text"], "causal-lm", recipe["block_size"])
    assert measured["loss"] == pytest.approx(sl["loss"], abs=1e-4)
    # An independent reference: transformers' logits, the cross-entropy summed by hand over windows that
    # overlap by one token (every token but the first predicted once), divided by characters.
    hf = AutoModelForCausalLM.from_pretrained(gpt_dir, **FLOAT32)
    ids = torch.tensor(tok.encode(sl["text"], allowed_special="none"))
    T, total, n = recipe["block_size"], 0.0, 0
    with torch.no_grad():
        for start in range(0, ids.numel() - 1, T - 1):
            window = ids[start : start + T][None]
            logits = hf(window).logits[0, :-1]
            total += float(F.cross_entropy(logits, window[0, 1:], reduction="sum"))
            n += window.shape[1] - 1
    assert n == ids.numel() - 1
    assert total / n == pytest.approx(sl["loss"], abs=1e-4)
    assert total / (len(sl["text"]) * math.log(2)) == pytest.approx(sl["bits_per_char"], abs=1e-4)


def test_gpt_clearly_beats_the_notebooks_quick_model(gpt_dir):
    val = _read(gpt_dir, "metrics.json")["validation"]
    assert val["bits_per_char"] <= QUICK_MODEL_TARGET_BPC - 0.15, val
    assert val["perplexity"] == pytest.approx(math.exp(val["loss"]), rel=1e-6)


# The previous course-gpt (docs corpus + 3 K characters of Russian dialogs; shipped until commit 55f9ec7),
# scored by build.language_scores on the same held-out text: bits per character and tokens per character.
PREVIOUS_GPT = {"english": {"bits_per_char": 1.9515, "tokens_per_char": 0.2908},
                "russian": {"bits_per_char": 4.8612, "tokens_per_char": 0.8891}, "cyrillic_token_cost": 1.137}


def test_gpt_is_bilingual_russian_clearly_better_than_the_previous_checkpoint(gpt, gpt_dir):
    """Issue 21: Russian held-out bits per character well below the docs-only checkpoint's; each figure
    recorded in metrics.json re-measured from the shipped weights (the Russian slice here; the whole
    held-out text of both languages in the slow test below)."""
    metrics, recipe = _read(gpt_dir, "metrics.json"), _read(gpt_dir, "recipe.json")["recipe"]
    assert recipe["corpus"] == "bilingual"
    scores = metrics["validation_by_language"]
    assert scores["russian"]["bits_per_char"] < PREVIOUS_GPT["russian"]["bits_per_char"] / 2
    assert scores["russian"]["tokens_per_char"] < PREVIOUS_GPT["russian"]["tokens_per_char"] / 2
    assert metrics["cyrillic_token_cost"] < PREVIOUS_GPT["cyrillic_token_cost"] / 2
    # what English paid for it, at the same size and number of steps: recorded, and bounded
    assert scores["english"]["bits_per_char"] < PREVIOUS_GPT["english"]["bits_per_char"] + 0.3
    model, tok = gpt
    from llm_course.text.encoding import cyrillic_token_cost

    assert cyrillic_token_cost(tok) == pytest.approx(metrics["cyrillic_token_cost"], abs=1e-12)
    ru = metrics["val_slice_russian"]
    measured = build.slice_loss(model, tok, ru["text"], "causal-lm", recipe["block_size"])
    assert measured["loss"] == pytest.approx(ru["loss"], abs=1e-4)


@needs_manpages
def test_gpt_per_language_scores_are_reproduced_on_this_machines_text(gpt, gpt_dir):
    """The whole held-out text of both languages, rebuilt here from the docs and the installed manual pages."""
    metrics = _read(gpt_dir, "metrics.json")["validation_by_language"]
    model, tok = gpt
    measured = build.language_scores(model, tok, _read(gpt_dir, "recipe.json")["recipe"]["block_size"])
    for language in ("english", "russian"):
        assert measured[language]["chars"] == metrics[language]["chars"], "the held-out text differs here"
        assert measured[language]["bits_per_char"] == pytest.approx(metrics[language]["bits_per_char"], abs=1e-4)


def test_gpt_greedy_continuation_is_deterministic_english_and_matches_transformers(gpt, gpt_dir):
    from transformers import AutoModelForCausalLM

    from llm_course.text.corpora import docs_corpus

    model, tok = gpt
    recorded = _read(gpt_dir, "metrics.json")["greedy_sample"]
    prompt = torch.tensor([tok.encode(recorded["prompt"])])
    a = generate(model, prompt, max_new_tokens=recorded["max_new_tokens"])  # greedy
    b = generate(model, prompt, max_new_tokens=recorded["max_new_tokens"])
    assert torch.equal(a, b)
    text = tok.decode(a[0, prompt.shape[1]:].tolist())
    assert text == recorded["continuation"]
    hf = AutoModelForCausalLM.from_pretrained(gpt_dir, **FLOAT32)
    hf_out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=recorded["max_new_tokens"],
                         do_sample=False, pad_token_id=0)
    assert torch.equal(hf_out, a)  # transformers' greedy search picks the same tokens
    # English-like: most words of the continuation are words of the training text
    known = set(docs_corpus().train.split())
    words = text.split()
    assert len(words) >= 5, text
    assert sum(w in known for w in words) / len(words) >= 0.7, text


def test_gpt_tokenizer_handles_cyrillic(gpt):
    _, tok = gpt
    for s in RUSSIAN:
        assert tok.decode(tok.encode(s)) == s
    # Russian text (the manual pages and dialogs) was in the tokenizer's training text: Cyrillic words are merged tokens
    s = "Привет! Как дела?"
    assert len(tok.encode(s)) < len(s.encode("utf-8")) * 0.5


@pytest.mark.skipif(not (paths.CHECKPOINTS_DIR / "course-gpt" / "tokenizer.json").is_file(),
                    reason="course-gpt is not shipped (llm_course/checkpoints/course-gpt missing)")
@settings(max_examples=40, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0x0400, max_codepoint=0x04FF) | st.sampled_from(" .,!?\nabc"),
               max_size=60))
def test_gpt_tokenizer_round_trips_any_cyrillic_text(s):
    tok = _cached_tokenizer(paths.CHECKPOINTS_DIR / "course-gpt")
    assert tok.decode(tok.encode(s, allowed_special="none")) == s


_TOKENIZERS: dict[Path, ByteLevelBPETokenizer] = {}


def _cached_tokenizer(folder: Path) -> ByteLevelBPETokenizer:
    if folder not in _TOKENIZERS:
        _TOKENIZERS[folder] = ByteLevelBPETokenizer.from_pretrained(folder)
    return _TOKENIZERS[folder]


# --------------------------------------------------------------------------------------------
# course-bert
# --------------------------------------------------------------------------------------------


def test_bert_loads_both_ways_with_equal_logits_and_reproduces_its_metrics(bert_dir):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model, tok = loading.load_pretrained("course-bert")
    assert isinstance(model, BERT) and isinstance(tok, ByteLevelBPETokenizer)
    hf = AutoModelForMaskedLM.from_pretrained(bert_dir, **FLOAT32)
    hf_tok = AutoTokenizer.from_pretrained(bert_dir)
    text = "Return the number of items in a container. Привет!"
    ids = [tok.special_tokens["[CLS]"], *tok.encode(text, allowed_special="none"), tok.special_tokens["[SEP]"]]
    assert hf_tok(text)["input_ids"] == ids  # the HF tokenizer adds [CLS] ... [SEP] like BERT's
    assert hf_tok.mask_token == "[MASK]" and hf_tok.pad_token_id == tok.special_tokens["[PAD]"] == 0
    x = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, hf(x).logits, atol=1e-4, rtol=1e-4)

    metrics, recipe = _read(bert_dir, "metrics.json"), _read(bert_dir, "recipe.json")["recipe"]
    sl = metrics["val_slice"]
    for m in (model, hf):  # the course model and transformers' give the recorded masked-LM loss
        got = build.slice_loss(m, tok, sl["text"], "masked-lm", recipe["block_size"], recipe["mlm_probability"])
        assert got["loss"] == pytest.approx(sl["loss"], abs=1e-4)
        assert got["masked_tokens"] == sl["masked_tokens"]
    # It uses the context: its masked-token loss is well below that of the best context-free guess, the
    # training text's token frequencies (add-one smoothed) scored on the validation text.
    from llm_course.text.corpora import docs_corpus

    fast = tok.to_hf_tokenizer()
    counts = torch.bincount(torch.tensor(fast.encode(docs_corpus().train).ids), minlength=tok.vocab_size).double() + 1
    val_ids = torch.tensor(fast.encode(docs_corpus().val).ids)
    unigram_loss = float(-(counts / counts.sum()).log()[val_ids].mean())
    assert metrics["validation"]["loss"] < unigram_loss - 0.25, (metrics["validation"], unigram_loss)


def test_bert_fills_a_mask_with_a_plausible_word(bert_dir):
    from llm_course.train.masked_lm import fill_mask

    model, tok = loading.load_pretrained("course-bert")
    guesses = fill_mask(model, tok, "Return True if the object is an instance of the class.", " the", k=5)
    assert " the" in [g for g, _ in guesses], guesses


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_unknown_zoo_name_lists_the_zoo():
    unknown = r"unknown zoo checkpoint 'course-gtp'.*Did you mean 'course-gpt'.*course-bert"
    with pytest.raises(ValueError, match=unknown):
        loading.load_pretrained("course-gtp")
    with pytest.raises(ValueError, match="kind must be one of"):
        loading.load_pretrained("course-gpt", kind="seq2seq")
    with pytest.raises(TypeError, match="name_or_path"):
        loading.load_pretrained(42)


def test_hub_id_while_offline_is_a_clear_error_listing_the_shipped_names(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"offline \(HF_HUB_OFFLINE=1\).*shipped checkpoint") as info:
        loading.load_pretrained("openai-community/gpt2")
    for name in loading.shipped_names():
        assert name in str(info.value)


def test_hub_failure_without_the_offline_flag_is_a_clear_error(monkeypatch):
    """No HF_HUB_OFFLINE, but the Hub cannot be reached: transformers' OSError becomes a ValueError.
    (huggingface_hub is put in offline mode underneath, so nothing is ever downloaded here.)"""
    import huggingface_hub.constants

    monkeypatch.setattr(loading, "_offline", lambda: False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match=r"(?s)could not load 'llm-course-tests/no-such-model'.*offline.*Shipped"):
        loading.load_pretrained("llm-course-tests/no-such-model")


def test_missing_folder_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no folder"):
        loading.load_pretrained(str(tmp_path / "nope" / "deeper"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        loading.load_pretrained(tmp_path / "empty")


class _Boom:
    """Unpickling this creates a file: the proof that a loader ran code from a pickle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_a_pickle_checkpoint_is_refused_and_never_unpickled(tiny_dir, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_dir, folder)
    (folder / "model.safetensors").unlink()
    sentinel = tmp_path / "code-ran"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Boom(str(sentinel))))
    with pytest.raises(ValueError, match=r"pickle checkpoint \(pytorch_model.bin\).*never unpickles"):
        loading.load_pretrained(folder)
    with pytest.raises(ValueError, match="pickle"):
        loading.load_pretrained(folder, as_course_model=False)
    assert not sentinel.exists()


def test_corrupt_weights_and_files_are_clear_errors(tiny_dir, tmp_path):
    bad = tmp_path / "truncated"
    shutil.copytree(tiny_dir, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        loading.load_pretrained(bad)
    garbage = tmp_path / "garbage"
    shutil.copytree(tiny_dir, garbage)
    (garbage / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        loading.load_pretrained(garbage)
    no_tok = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_dir, no_tok)
    (no_tok / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        loading.load_pretrained(no_tok)
    bad_config = tmp_path / "bad-config"
    shutil.copytree(tiny_dir, bad_config)
    (bad_config / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        loading.load_pretrained(bad_config)


# --------------------------------------------------------------------------------------------
# train_checkpoint on a tiny recipe
# --------------------------------------------------------------------------------------------


@needs_manpages
def test_bilingual_recipe_scores_each_language_and_rescores_the_russian_slice(tmp_path):
    """A tiny bilingual recipe: both languages in the training text, each scored on its own held-out text."""
    out = build.train_checkpoint(
        "course-gpt", tmp_path / "tiny-bilingual", progress=False, max_steps=2, warmup_steps=1, vocab_size=400,
        n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=4, max_train_chars=60_000, eval_interval=2,
        eval_steps=1, max_val_chars=3000, val_slice_chars=300, threads=None, corpus="bilingual")
    metrics, data = _read(out, "metrics.json"), _read(out, "recipe.json")["data"]
    assert data["russian_train_chars"] > 1_000_000 and "manual pages" in data["train"]
    scores = metrics["validation_by_language"]
    assert set(scores) == {"english", "russian"}
    for score in scores.values():
        assert score["chars"] == 3000 and score["tokens"] == round(score["tokens_per_char"] * 3000)
        # bits per character = loss (nats per token) x tokens per character / ln 2
        bpc = score["loss"] * score["tokens_per_char"] / math.log(2)
        assert math.isclose(score["bits_per_char"], bpc, rel_tol=1e-6)
    # the tokenizer saw Russian text: it has merges of Cyrillic letters, so a letter costs less than a token
    assert metrics["cyrillic_token_cost"] < 1.0
    assert build.evaluate_checkpoint(out)["russian"]["abs_diff"] < 1e-5


def test_train_checkpoint_tiny_recipe_makes_a_loadable_folder(tiny_dir):
    from transformers import AutoModelForCausalLM

    names = {f.name for f in tiny_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "recipe.json",
            "metrics.json"} <= names
    assert not [n for n in names if n.endswith(recipes.PICKLE_SUFFIXES)]
    recipe = _read(tiny_dir, "recipe.json")
    assert recipe["recipe"]["max_steps"] == recipe["steps"] == 4 and recipe["recipe"]["n_embd"] == 32
    assert recipe["torch"] == torch.__version__ and recipe["seed"] == 0
    model, tok = loading.load_pretrained(tiny_dir)
    assert isinstance(model, GPT) and model.config.n_embd == 32 and tok.vocab_size == 300
    hf = AutoModelForCausalLM.from_pretrained(tiny_dir, **FLOAT32)
    x = torch.tensor([tok.encode("def main(): return 0")])
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, hf(x).logits, atol=1e-5, rtol=1e-5)
    # the stored file is float16, and the recorded metrics were measured on the rounded weights
    from safetensors import safe_open

    with safe_open(str(tiny_dir / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    result = build.evaluate_checkpoint(tiny_dir)
    assert result["abs_diff"] < 1e-5
    assert result["validation"]["loss"] == pytest.approx(_read(tiny_dir, "metrics.json")["validation"]["loss"],
                                                         abs=1e-4)


def test_train_checkpoint_refuses_to_overwrite_and_leaves_nothing_when_cut_short(tiny_dir, tmp_path):
    with pytest.raises(FileExistsError, match="overwrite"):
        build.train_checkpoint("course-gpt", tiny_dir, max_steps=2, warmup_steps=1)
    out = tmp_path / "cut"
    with pytest.raises(TimeoutError, match="nothing was written"):
        build.train_checkpoint("course-gpt", out, progress=False, max_steps=50, warmup_steps=1, vocab_size=300,
                             n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=4, max_train_chars=30_000,
                             max_val_chars=5000, eval_interval=50, eval_steps=1, time_limit_s=1e-6, threads=None)
    assert not out.exists() and not list(tmp_path.glob(".cut-*"))
    with pytest.raises(ValueError, match="unknown zoo checkpoint"):
        build.train_checkpoint("course-gtp", tmp_path / "x")


def test_cli_zoo_list_and_errors():
    r = subprocess.run([sys.executable, "-m", "llm_course.cli", "zoo", "list"], capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "course-gpt" in r.stdout and "course-bert" in r.stdout
    r = subprocess.run([sys.executable, "-m", "llm_course.cli", "zoo", "eval", "course-gtp"], capture_output=True,
                       text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 2 and "unknown zoo checkpoint" in r.stderr and "Traceback" not in r.stderr


def test_cli_zoo_eval_rescoring_matches(tiny_dir):
    from llm_course import cli

    assert cli.main(["zoo", "eval", str(tiny_dir)]) == 0


def test_a_t5_folder_loads_as_the_course_t5_and_as_transformers(gpt, tmp_path):
    """Tuned checkpoints can be sequence-to-sequence (course-t5-sum): the loader reads model_type t5."""
    from llm_course.models.t5 import T5, T5Config

    _, tok = gpt
    torch.manual_seed(0)
    model = T5(T5Config(vocab_size=tok.vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                        pad_token_id=0, eos_token_id=0, decoder_start_token_id=0)).eval()
    model.to_hf().save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    course, course_tok = loading.load_pretrained(tmp_path)
    hf, _ = loading.load_pretrained(tmp_path, as_course_model=False)
    assert isinstance(course, T5) and type(hf).__name__ == "T5ForConditionalGeneration"
    src = torch.tensor([course_tok.encode("Return the sum of the arguments.")])
    labels = torch.tensor([course_tok.encode("Add numbers.")])
    with torch.no_grad():
        a = course(input_ids=src, labels=labels)
        b = hf(input_ids=src, labels=labels)
        c = model(input_ids=src, labels=labels)
    assert torch.allclose(a.logits, c.logits, atol=1e-6) and torch.allclose(a.logits, b.logits, atol=1e-5)
    with pytest.raises(ValueError, match="seq2seq|causal"):
        loading.load_pretrained(tmp_path, kind="causal-lm")
