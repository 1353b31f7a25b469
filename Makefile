# Each target does its own set-up first, so a fresh Debian machine needs nothing else.
PY := .venv/bin/python
BIN := $(HOME)/.local/bin

.PHONY: setup path demo test lint bench docs dashboards clean

setup:
	scripts/setup.sh
	@$(MAKE) --no-print-directory path

# `carbonwatch` on PATH: a link in ~/.local/bin (on PATH in Debian's default ~/.profile) to this checkout's.
path:
	@mkdir -p $(BIN) && ln -sfn $(CURDIR)/.venv/bin/carbonwatch $(BIN)/carbonwatch
	@case ":$$PATH:" in \
	  *":$(BIN):"*) echo "path: carbonwatch is on PATH ($(BIN)/carbonwatch -> $(CURDIR)/.venv/bin/carbonwatch)";; \
	  *) echo "path: linked $(BIN)/carbonwatch; $(BIN) is not on PATH in this shell, add it with:"; \
	     echo '  export PATH="$$HOME/.local/bin:$$PATH"';; \
	esac

demo: setup
	$(PY) -m carbonwatch.stack.demo

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
