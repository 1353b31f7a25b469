# Each target does its own set-up first, so a fresh Debian machine needs nothing else.
PY := .venv/bin/python

.PHONY: setup path demo check test lint bench docs dashboards clean

setup:
	scripts/setup.sh
	@$(MAKE) --no-print-directory path

# `carbonwatch` on PATH: a link where the PATH already looks (~/.local/bin, ~/bin or /usr/local/bin), else the
# exact path to run.
path:
	@scripts/path.sh

demo: setup
	$(PY) -m carbonwatch.stack.demo

# The fast tier (under a minute): unit tests without binaries or training, and promtool's rule tests.
check:
	scripts/setup.sh test
	$(PY) -m pytest -q -m "not slow" -p no:cacheprovider
	cd tests/rules && promtool test rules *.test.yml

# The whole suite, real Prometheus-stack binaries and training included (about 15 minutes on 2 cores).
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
	$(PY) -m tools.gen_metrics_doc

# grafana/dashboards/*.json from carbonwatch.dashboards (grafana-foundation-sdk, in the test extra).
dashboards:
	scripts/setup.sh test
	$(PY) -m carbonwatch.dashboards grafana/dashboards

clean:
	rm -rf .venv .state build *.egg-info
