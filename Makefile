# Each target does its own set-up first, so a fresh Debian machine needs nothing else.
PY := .venv/bin/python

.PHONY: setup demo test lint bench docs clean

setup:
	scripts/setup.sh

demo:
	scripts/setup.sh
	$(PY) -m carbonwatch.demo

test:
	scripts/setup.sh test
	$(PY) -m pytest -q

lint:
	scripts/setup.sh test
	$(PY) -m ruff check exporter tests bench
	$(PY) -m mypy

bench:
	scripts/setup.sh test
	$(PY) -m bench

docs:
	$(PY) -m carbonwatch.metrics > docs/metrics.md

clean:
	rm -rf .venv .state build *.egg-info
