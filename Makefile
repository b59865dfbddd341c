# Every target bootstraps .venv itself through dev.py; only Python 3.11+ is needed.
.DEFAULT_GOAL := help
PY ?= python3

help: ## show this help
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

run: ## start the server with the demo configuration (http://127.0.0.1:8000)
	$(PY) dev.py demo

test: ## run the whole test suite
	$(PY) dev.py test

check: ## ruff lint, ruff format --check, mypy --strict
	$(PY) dev.py check

fmt: ## apply ruff fixes and formatting
	$(PY) dev.py fmt

bench: ## the benchmark suite (BENCH_ARGS=--quick for a smoke run)
	$(PY) dev.py bench $(BENCH_ARGS)

.PHONY: help run test check fmt bench
