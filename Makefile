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

.PHONY: help venv install lab test test-fast lint bench readme strip clean

help:
	@echo "make lab    install everything into $(VENV) and open the course in JupyterLab"
	@echo "make test   install everything into $(VENV) and run every test, notebooks included"
	@echo "make lint   check the code with ruff (its settings: pyproject.toml [tool.ruff])"
	@echo "make bench  run the benchmarks (ratios measured side by side)"
	@echo "make readme regenerate the README's measured tables from benchmarks/results/"
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

strip: $(VENV)/.installed
	$(PY) -m llm_course.cli strip notebooks/*.ipynb

clean:
	rm -rf $(VENV) build runs .pytest_cache
