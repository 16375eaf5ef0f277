# Quick start: `make demo` (set up + run the main job) and `make test` (set up + whole test suite).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): requirements/test.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements/test.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/prunekit demo

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

FASHION := /usr/share/datasets/fashion-mnist

bench: $(STAMP)
	test -d $(FASHION) || ( $$(command -v sudo) apt-get update -qq && $$(command -v sudo) apt-get install -y -qq dataset-fashion-mnist )
	HYPOTHESIS_PROFILE=thorough $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_fuzz.py tests/deploy/test_format.py
	$(BIN)/python bench/prune_global.py
	$(BIN)/python bench/fashion_mnist.py
	$(BIN)/python bench/oneshot.py
	$(BIN)/python bench/sizes.py
	$(BIN)/pip install -q -r requirements/bench.txt
	$(BIN)/python bench/structured.py
	$(BIN)/python bench/advise.py
	$(BIN)/python examples/minilm_sparse.py
	test -x .venv-deepsparse/bin/python || ( $(PY) -m venv .venv-deepsparse && .venv-deepsparse/bin/pip install -q "deepsparse==1.8.0" "numpy<2" ) || echo "DeepSparse 1.8 not installable here: its column is skipped"
	$(BIN)/python bench/sparse_runtime.py
	$(BIN)/python bench/kernels.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
