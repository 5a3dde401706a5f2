# Three entry points, each installing what it needs on first use (a project-local .venv):
#   make demo   the five notebooks headless on the demo profile, then figs/REPORT.md
#               (PROFILE=NAME another profile; SET="SECTION.FIELD=VALUE ..." overrides, as adkit --set)
#   make test   the test suite (make test-fast skips the slow end-to-end runs; make test-browser
#               opens notebooks in JupyterLab in headless Chromium)
#   make lab    JupyterLab on the notebooks, in the project's environment
# A GPU user can point VENV at an environment that already has their torch build:
# the CPU pin below is only installed when torch is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(abspath $(VENV))/bin/python
STAMP := $(VENV)/.adkit-installed
TEST_STAMP := $(VENV)/.adkit-test-installed
PROFILE ?= demo
RUN ?= runs/$(PROFILE)
SET ?=
CHROMIUM ?= /usr/bin/chromium

.PHONY: demo test test-fast test-browser lab install clean-runs

install: $(STAMP)

$(STAMP): pyproject.toml  # what the demo and JupyterLab need
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[notebooks]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)  # and what the tests need
	$(PY) -m pip install -q -e '.[notebooks,test]'
	touch $(TEST_STAMP)

demo: $(STAMP)
	$(VENV)/bin/adkit demo --profile $(PROFILE) --run-dir $(RUN) $(if $(SET),--set $(SET))

lab: $(STAMP)  # the kernel starts in notebooks/; paths resolve against the project all the same
	cd notebooks && $(abspath $(VENV))/bin/jupyter lab --ip 127.0.0.1 $$([ "$$(id -u)" = 0 ] && echo --allow-root)

test: $(TEST_STAMP)
	$(PY) -m pytest -q --timeout=900 tests

test-fast: $(TEST_STAMP)  # the edit loop: everything but the end-to-end runs marked slow (under a minute)
	$(PY) -m pytest -q --timeout=300 -m "not slow" tests

test-browser: $(TEST_STAMP)  # Debian's Chromium, installed here when we may (root with apt-get), else a clear skip
	@test -x $(CHROMIUM) || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ apt-get update -qq && apt-get install -y -qq chromium; } >/dev/null 2>&1; } || true
	@if [ -x $(CHROMIUM) ]; then ADKIT_BROWSER_TEST=1 $(PY) -m pytest -q --timeout=900 tests/browser; \
	else echo "test-browser: SKIPPED: $(CHROMIUM) is missing and could not be installed (apt-get install chromium)"; fi

clean-runs:
	rm -rf runs
