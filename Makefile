# The two commands of the README: `make run` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-fast lab bench gpu-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m ipykernel install --sys-prefix --name blm_lab --display-name "Python (blm_lab)" > /dev/null
	touch $(STAMP)

venv: $(STAMP)

## run: the main job on the embedded default corpus (writes under outputs/)
run: $(STAMP)
	$(PY) -m blm_lab run

## test: the test suite
test: $(STAMP)
	$(PY) -m pytest -q

## lab: JupyterLab on the notebooks, with the project's kernel
lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

## bench: the CPU benchmarks (training recipe, coder, compression)
bench: $(STAMP)
	$(PY) benchmarks/bench_coder.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_compress.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
