# The two set-up commands of the README. Both bootstrap first (idempotent).
.PHONY: bootstrap test demo lint bench
VENV := .venv/bin

bootstrap:
	@scripts/bootstrap.sh

lint: bootstrap
	$(VENV)/ruff check .
	$(VENV)/mypy

test: lint
	$(VENV)/pytest -q

demo: bootstrap
	$(VENV)/portvakt demo

bench: bootstrap
	$(VENV)/python -m bench.verify
