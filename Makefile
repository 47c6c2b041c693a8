# Two commands a new user needs: `make demo` (whole pipeline on the embedded default) and `make test`.
# Both create .venv first; the install order matters (see README "Install").
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint schema clean

install: $(STAMP)

$(STAMP): pyproject.toml infra/constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: an open range would pull the CUDA build and GBs of nvidia wheels.
	$(BIN)/python -m pip install -q -c infra/constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c infra/constraints.txt -e '.[dev]'
	# img2dataset drags in the `dataclasses` backport, which kills Prefect's server at start-up.
	$(BIN)/python -m pip uninstall -q -y dataclasses || true
	touch $(STAMP)

demo: install
	$(BIN)/vlmpipe demo

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

schema: install
	$(BIN)/vlmpipe spec schema --out data_specs/schema

clean:
	rm -rf .vlmpipe .pytest_cache
