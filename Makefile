# Two entry points: `make test` and `make demo`. Each creates .venv when missing and
# (re)installs the package only when setup.cfg / pyproject.toml changed since the last
# install (the stamp file), so a second run installs nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.colorbench-installed

.PHONY: install test demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/colorbench demo --config configs/suites/demo.yaml

clean:
	rm -rf $(VENV) build *.egg-info
