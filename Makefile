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

# The fast tier (under a minute on 2 cores): unit tests without binaries or training (two pytest workers),
# and promtool's rule tests beside them.
check:
	scripts/setup.sh test
	@rules=$$(mktemp); (cd tests/rules && promtool test rules *.test.yml) >$$rules 2>&1 & pid=$$!; \
	$(PY) -m pytest -q -n 2 -m "not slow" -p no:cacheprovider; py=$$?; \
	wait $$pid; pr=$$?; echo "promtool test rules tests/rules/*.test.yml:"; cat $$rules; rm -f $$rules; \
	[ $$py -eq 0 ] && [ $$pr -eq 0 ]

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
