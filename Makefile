# `make test` sets up a fresh Debian 12 machine (as root) from a clean clone and runs the suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := git graphviz busybox-static crun runc chromium uidmap proot

.PHONY: setup apt venv test lint typecheck unit demo notebooks clean bench

setup: apt venv

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing apt packages:$$missing (run as root or install them)"; exit 1; fi; \
	fi

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

venv: $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'

lint: venv
	$(BIN)/ruff check engine nbbuild tests
	$(BIN)/mypy

# After the root run (which also fills the BuildKit oracle's result cache), the suites listed in
# tests/rootless-suites.txt (and tests/differential) run again as unprivileged users: with a
# subordinate ID range (same results as root), then with only the user's own ID mapped (builds
# that need other IDs fail with a clear error, everything else passes).
ROOTLESS_SUITES := $(shell sed -e 's/\#.*//' tests/rootless-suites.txt 2>/dev/null)
ROOTLESS_SUITES += $(if $(filter tests/differential,$(ROOTLESS_SUITES)),,tests/differential)

# Some tests run this checkout's code as the unprivileged test users: as root, let others
# traverse the directories above it (a `mktemp -d` parent is 0700); nothing is made readable
# that was not.
test: setup
	@if [ "$$(id -u)" = 0 ]; then d="$(CURDIR)"; while [ "$$d" != / ]; do chmod o+x "$$d"; d=$$(dirname "$$d"); done; fi
	$(BIN)/ruff check engine nbbuild tests
	$(BIN)/mypy
	$(BIN)/pytest -q
	bash scripts/rootless-tests.sh range $(ROOTLESS_SUITES)
	bash scripts/rootless-tests.sh single $(ROOTLESS_SUITES)

# The main job: build the dependency-first example, rebuild, edit, rebuild (see scripts/demo.py).
demo: setup
	$(BIN)/python scripts/demo.py

# nbbuild vs real BuildKit (a private dockerd), same scenarios, same machine; long (~10 min), not
# part of `make test`. BENCH_ARGS e.g. "-n 7 --only P1,P4"; table in docs/benchmarks.md.
bench: setup
	$(BIN)/python bench/bench.py $(BENCH_ARGS)

# Re-execute the notebooks in place (fresh store each), refreshing their committed outputs.
notebooks: setup
	for nb in notebooks/*.ipynb; do $(BIN)/python tests/notebooks/execute.py "$$nb" || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
