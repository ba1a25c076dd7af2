# Two entry points: `make test` and `make demo`. Each creates .venv when missing and
# (re)installs the package only when setup.cfg / pyproject.toml changed since the last
# install (the stamp file), so a second run installs nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.colorbench-installed

.PHONY: install browser-deps test demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The study's browser test (tests/test_study.py) drives the distribution's headless
# Chromium through Selenium. Installed only when missing, as root, with apt-get; otherwise
# (or if apt fails) this says why and the test skips with its reason: never a failed build.
browser-deps:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u 2>/dev/null)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "browser-deps: chromium/chromedriver missing; as root on Debian/Ubuntu: apt-get install chromium chromium-driver (the browser test skips)"; \
	else \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	    || echo "browser-deps: apt-get could not install chromium chromium-driver; the browser test skips"; \
	fi

test: $(STAMP) browser-deps
	$(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/colorbench demo --config configs/suites/demo.yaml

clean:
	rm -rf $(VENV) build *.egg-info
