# Two entry points: `make demo` (the five notebooks headless on the demo profile)
# and `make test` (`make test-fast` skips the slow end-to-end runs). Both create a project-local virtual environment on first use.
# A GPU user can point VENV at an environment that already has their torch build:
# the CPU pin below is only installed when torch is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.adkit-installed
PROFILE ?= demo
RUN ?= runs/$(PROFILE)

.PHONY: demo test test-fast install clean-runs

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[notebooks,test]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/adkit demo --profile $(PROFILE) --run-dir $(RUN)

test: $(STAMP)
	$(PY) -m pytest -q --timeout=900 tests

test-fast: $(STAMP)  # the edit loop: everything but the end-to-end runs marked slow (under a minute)
	$(PY) -m pytest -q --timeout=300 -m "not slow" tests

clean-runs:
	rm -rf runs
