# The README's commands. `make lab` and `make test` each install first, from a fresh clone, from the lock.
# tools/install.py does the installing (the same script runs without make: `python tools/install.py lab`).
PYTHON ?= python3
VENV ?= .venv
LATEST_VENV ?= .venv-latest
WHEELHOUSE ?=
LAB_ARGS ?=
PYTEST_ARGS ?=
# The latest-releases lane runs the lessons and the tests that meet the libraries' moving parts
# (loading, quantization, offloading, TP, KV cache, and the plain-Python copy of their placement rule with the
# facts it plans presets from); the locked lane runs everything.
LATEST_TESTS ?= lessons tests/test_parallel.py tests/test_quantization_paths.py tests/test_offload.py \
	tests/test_kvcache.py tests/test_loading.py tests/test_install.py tests/test_check.py tests/test_compat.py \
	tests/test_placement_rule.py tests/test_facts.py
INSTALL = $(PYTHON) tools/install.py $(if $(WHEELHOUSE),--wheelhouse $(WHEELHOUSE))
ifeq ($(OS),Windows_NT)
BIN := Scripts
else
BIN := bin
endif
PY := $(VENV)/$(BIN)/python

.PHONY: install lab test test-latest lock notebooks benchmark check clean workshop wheelhouse

install:
	$(INSTALL) --venv $(VENV)

lab: install
	$(PY) -m bigsmall_lab.cli lab $(LAB_ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# Newest releases pyproject allows (no lock), in their own venv; torch stays the lock's CPU build.
# When those releases are the lock's, the lane would repeat `make test`: it says so and stops (LATEST_ALWAYS=1 runs it).
test-latest:
	@status=0; $(INSTALL) --latest --venv $(LATEST_VENV) --differs-from-lock || status=$$?; \
	if [ $$status -eq 0 ] || [ -n "$(LATEST_ALWAYS)" ]; then \
		$(LATEST_VENV)/$(BIN)/python -m pytest $(LATEST_TESTS) $(PYTEST_ARGS); \
	elif [ $$status -ne 3 ]; then exit $$status; fi

# Resolve pyproject's ranges to the newest releases and write the lock (and binder/requirements.txt).
lock:
	$(INSTALL) --lock --venv $(LATEST_VENV)

check: install
	$(PY) -m bigsmall_lab.cli check

# Re-execute the lessons on this CPU and store their outputs (no widget state) for GitHub readers.
notebooks: install
	$(PY) tools/colab_cells.py
	$(PY) tools/run_lessons.py
	$(PY) tools/claims.py
	$(PY) tools/lesson_map.py

benchmark: install
	$(PY) tools/benchmark.py

# The instructors' guide: run every lesson, record its time and peak RAM (benchmarks/workshop.json), then write
# docs/workshop.md from that record (`$(PY) tools/workshop.py --doc` rewrites it from the record alone).
workshop: install
	$(PY) tools/workshop.py

# The offline kit: a wheel of every package of the lock, for this platform, in $(WHEELHOUSE) (default wheelhouse);
# a room without a network then runs `PIP_NO_INDEX=1 make lab WHEELHOUSE=<that folder>`.
wheelhouse:
	$(PYTHON) tools/wheelhouse.py $(or $(WHEELHOUSE),wheelhouse)

clean:
	rm -rf $(VENV) $(LATEST_VENV) .pytest_cache screenshots
