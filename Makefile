# The two commands of the README: `make run` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
INSTALL_LOG := $(VENV)/install.log

.PHONY: run test test-fast lab bench chromium zpaq clean

# Installation is quiet: its output goes to .venv/install.log and is shown only when a step fails.
$(STAMP): pyproject.toml
	@echo "setting up $(VENV) (pip install -e '.[test]'; output in $(INSTALL_LOG)) ..."
	@$(PYTHON) -m venv $(VENV)
	@( $(PY) -m pip install --upgrade pip \
	  && $(PY) -m pip install -e '.[test]' \
	  && $(PY) -m ipykernel install --sys-prefix --name blm_lab --display-name "Python (blm_lab)" ) \
	  > $(INSTALL_LOG) 2>&1 || { cat $(INSTALL_LOG); echo "installation failed (log above, also in $(INSTALL_LOG))"; exit 1; }
	@touch $(STAMP)

venv: $(STAMP)

## run: the main job on the embedded default corpus (writes under outputs/; zpaq is installed first where this user can)
run: $(STAMP) zpaq
	$(VENV)/bin/blm-lab run

## test: the test suite, the browser test included (Chromium and zpaq are installed first where this user can)
test: $(STAMP) chromium zpaq
	$(PY) -m pytest -q

## test-fast: the tests without the slow ones
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not browser"

# Debian packages, installed where this user can (root or sudo), otherwise a note; see tools/apt_install.sh.
chromium:
	@sh tools/apt_install.sh chromium chromium "the browser test will be skipped"

zpaq:
	@sh tools/apt_install.sh zpaq zpaq "the comparison table leaves zpaq out, with a note"

## lab: JupyterLab on the notebooks, with the project's kernel
lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

## bench: the CPU benchmarks (training recipe, coder, compression)
bench: $(STAMP) zpaq
	$(PY) benchmarks/bench_coder.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_compress.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
