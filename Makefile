# Every target creates .venv if missing and installs the project into it (nothing relies on
# what a machine happens to have). Override the interpreter with `make PYTHON=python3.12 …`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install browser test lint typecheck unit bench demo soak clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# The casebook's browser test renders its HTML in Debian's Chromium: installed here when missing
# and this is a Debian machine run as root (about 10 s); elsewhere the test says how to get one
# (and with CI=true fails without it).
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || ! command -v apt-get >/dev/null || [ "$$(id -u)" != 0 ] || \
	  apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && \
	    apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; } || \
	  echo "note: could not install Debian's chromium; the browser test will say so" >&2

# Test files run in parallel, one file per worker at a time (`--dist loadfile` keeps each
# module's fixtures, such as a private PostgreSQL server, in one process); WORKERS=0 runs them
# serially.
WORKERS ?= auto
test: lint browser
	$(BIN)/python -m pytest -q $(if $(filter 0,$(WORKERS)),,-n $(WORKERS) --dist loadfile)

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.projections
	$(BIN)/python -m bench.commands
	$(BIN)/python -m bench.startup
	$(BIN)/python -m bench.commands_scale
	$(BIN)/python -m bench.commands_concurrent
	$(BIN)/python -m bench.amendment

demo: $(STAMP)
	$(BIN)/trialflow --db sqlite:///demo.db demo --replace
	@echo
	@echo "Try next:"
	@echo "  $(BIN)/trialflow --db sqlite:///demo.db visits S-002"
	@echo "  $(BIN)/trialflow --db sqlite:///demo.db audit log S-004"
	@echo "  $(BIN)/trialflow --db sqlite:///demo.db status --as-of 2024-10-15T00:00:00Z"

# The long reliability runs (docs/reliability.md): 200+ kills, a minute of load with 16
# coordinators on PostgreSQL, the bad-input corpus with fresh randomness and many examples.
soak: $(STAMP)
	HYPOTHESIS_PROFILE=soak $(BIN)/python -m pytest -m soak -v -s tests/reliability

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
