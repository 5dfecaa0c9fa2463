# The two commands of the README:
#   make demo   set up, then run the default example in the shield
#   make test   set up, then run the whole test suite (what CI runs)

VENV := .venv/bin
export PATH := $(CURDIR)/$(VENV):$(PATH)

.PHONY: setup
setup:
	./scripts/setup.sh

.PHONY: demo
demo: setup
	./scripts/demo.sh

.PHONY: test
test: setup lint
	$(VENV)/python -m pytest -q -p no:cacheprovider tests

.PHONY: lint
lint: setup
	$(VENV)/ruff check src tests bench
	$(VENV)/mypy

.PHONY: bench
bench: setup
	for b in bench/bench_*.py; do $(VENV)/python $$b || exit 1; done
