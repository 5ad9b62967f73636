# llm-course: the two commands a newcomer needs are `make lab` and `make test`.
# Everything is installed into a local virtual environment, .venv/, next to this file.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch is installed first, on its own, so that the project's open range (torch>=2.4)
# is already satisfied and pip never pulls a multi-GB CUDA build onto a CPU-only machine.
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
HAS_NVIDIA := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo yes)
TORCH_EXTRA := $(if $(HAS_NVIDIA),,--extra-index-url $(TORCH_CPU_INDEX))
PYTEST_ARGS ?=
# Jupyter refuses to run as root (as in many containers) unless told to.
LAB_ARGS ?= $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root,)

.PHONY: help venv install lab test test-fast test-floor lint bench readme translate strip clean

help:
	@echo "make lab    install everything into $(VENV) and open the course in JupyterLab"
	@echo "make test   install everything into $(VENV) and run every test, notebooks included"
	@echo "make lint   check the code with ruff (its settings: pyproject.toml [tool.ruff])"
	@echo "make test-floor  the same code on the oldest allowed versions (requirements-floor.txt) in $(FLOOR_VENV)"
	@echo "make bench  run the benchmarks (ratios measured side by side)"
	@echo "make readme regenerate the README's measured tables from benchmarks/results/"
	@echo "make translate  rebuild the Russian edition (notebooks/ru, exercises/ru, README.ru.md) from the catalogues"
	@echo "make strip  remove outputs from every notebook (they are committed without outputs)"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# The stamp re-runs the install when the project's requirements change.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -c "import torch" 2>/dev/null || \
	  $(PY) -m pip install --quiet --retries 1 --timeout 20 $(TORCH_EXTRA) "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet -e ".[lab,test]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (llm-course)" >/dev/null
	touch $@

venv install: $(VENV)/.installed

lab: $(VENV)/.installed
	$(VENV)/bin/jupyter lab $(LAB_ARGS) notebooks/

test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check

# Library tests only (no notebook execution): quick feedback while editing.
test-fast: $(VENV)/.installed
	$(PY) -m pytest tests $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(PY) -m llm_course.cli bench

readme: $(VENV)/.installed
	$(PY) -m llm_course.cli readme

translate: $(VENV)/.installed
	$(PY) -m llm_course.cli translate ru

strip: $(VENV)/.installed
	$(PY) -m llm_course.cli strip notebooks/*.ipynb

# The oldest versions the project allows, tested: a second environment, .venv-floor/, with torch's CPU
# build first (as above; torch's own floor is not installable here), then the project with every
# direct dependency pinned to its floor (requirements-floor.txt, used as pip constraints). It runs
# the library tests and the notebooks that exercise those packages. Its figures are not recorded
# (LLM_COURSE_NO_RECORD): the README's measurements are the main environment's.
FLOOR_VENV ?= .venv-floor
FLOOR_PY := $(FLOOR_VENV)/bin/python
FLOOR_NOTEBOOKS ?= notebooks/05_finetuning.ipynb notebooks/06_lora_qlora_adapters.ipynb \
                   notebooks/07_inference.ipynb notebooks/08_applications.ipynb
# Not the whole library suite, to keep the floor run short enough for CI on 2 cores: the tests that
# import a version-sensitive dependency (transformers, tokenizers, safetensors, accelerate, peft, torchao,
# onnx/onnxruntime, ipywidgets, ray, tensorboard/wandb, nbgrader, chatterbot-corpus, rouge-score) or exercise
# a module that does, and the floors' own checks. Left out: tests of the course's own torch code (attention,
# adapters, static cache, DDP, practices, checks, CUDA), which runs on the same torch 2.13.0 in both environments, the
# repository's own checks (layers, harness, notebook text, report, benchmarks, translation), the browser test
# (JupyterLab + Chromium, 75 s) and tests/test_learn*.py (lessons still being written). Measured 2026-12-04 on
# 2 cores: these files took about 7 minutes at load averages 1.6-3.4 (installing the environment: 148 s).
FLOOR_TESTS ?= tests/test_versions.py tests/test_packaging.py tests/test_cli.py \
               tests/test_finetuning.py tests/test_lora.py tests/test_instruct.py tests/test_monitoring.py \
               tests/test_training.py tests/test_pretraining.py tests/test_objectives.py \
               tests/test_gpt.py tests/test_bert.py tests/test_t5.py tests/test_shape.py tests/test_intro.py \
               tests/test_generation.py tests/test_context_length.py tests/test_long_context.py \
               tests/test_tokenizer.py tests/test_encoding.py tests/test_data.py \
               tests/test_zoo.py tests/test_chat.py tests/test_classification.py tests/test_summarization.py \
               tests/test_quantization.py tests/test_onnx_export.py tests/test_onnx_cache.py \
               tests/test_widgets.py tests/test_sampling_explorer.py tests/test_colab_widgets.py \
               tests/test_hpsearch.py tests/test_exercises.py

$(FLOOR_VENV)/.installed: pyproject.toml requirements-floor.txt
	rm -rf $(FLOOR_VENV)
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_PY) -m pip install --quiet --upgrade pip
	$(FLOOR_PY) -m pip install --quiet --retries 1 --timeout 20 $(TORCH_EXTRA) "torch==$(TORCH_VERSION)"
	$(FLOOR_PY) -m pip install --quiet -e ".[lab,test]" -c requirements-floor.txt
	$(FLOOR_PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (llm-course, floor)" >/dev/null
	touch $@

test-floor: $(FLOOR_VENV)/.installed
	$(FLOOR_PY) -m llm_course.cli check
	LLM_COURSE_NO_RECORD=1 $(FLOOR_PY) -m pytest $(FLOOR_TESTS) $(FLOOR_NOTEBOOKS) $(PYTEST_ARGS)

# Hugging Face Optimum's ONNX Runtime export next to the course's (chapter 07, benchmarks/bench_optimum.py):
# a third environment, .venv-optimum/. optimum.onnxruntime (ORTModelForCausalLM) comes from optimum-onnx,
# whose newest release (0.1.0) needs transformers<4.58 and optimum~=2.1, while the main environment has
# transformers 5.x; so this one has torch's CPU build first (as above), then the project with the newest
# transformers 4.x that optimum-onnx accepts. Its benchmark records benchmarks/results/optimum.json; the
# Optimum test in tests/test_onnx_cache.py runs here (the main environment skips it, saying why):
#   LLM_COURSE_NO_RECORD=1 .venv-optimum/bin/python -m pytest tests/test_onnx_cache.py
.PHONY: optimum-env bench-optimum
OPTIMUM_VENV ?= .venv-optimum
OPTIMUM_PY := $(OPTIMUM_VENV)/bin/python

$(OPTIMUM_VENV)/.installed: pyproject.toml
	rm -rf $(OPTIMUM_VENV)
	$(PYTHON) -m venv $(OPTIMUM_VENV)
	$(OPTIMUM_PY) -m pip install --quiet --upgrade pip
	$(OPTIMUM_PY) -m pip install --quiet --retries 1 --timeout 20 $(TORCH_EXTRA) "torch==$(TORCH_VERSION)"
	$(OPTIMUM_PY) -m pip install --quiet -e . "optimum-onnx[onnxruntime]>=0.1" "transformers>=4.50,<4.58" \
	  "pytest>=8.2" "psutil>=5.9"
	touch $@

optimum-env: $(OPTIMUM_VENV)/.installed

bench-optimum: $(OPTIMUM_VENV)/.installed
	$(OPTIMUM_PY) benchmarks/bench_optimum.py

clean:
	rm -rf $(VENV) $(FLOOR_VENV) build runs .pytest_cache
