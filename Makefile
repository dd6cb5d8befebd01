# The two set-up commands of the README. Both bootstrap first (idempotent).
# `make install` is the site's install (scripts/install.sh): no test rig, no .venv, never
# bootstraps; PREFIX, BINDIR and DESTDIR (a test root) are passed on to it.
.PHONY: bootstrap test demo lint bench install
VENV := .venv/bin
PREFIX ?= /opt/portvakt
BINDIR ?= /usr/local/bin

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

install:
	@DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" BINDIR="$(BINDIR)" scripts/install.sh
