#!/usr/bin/env bash
# All set-up on a fresh Debian machine: the Prometheus stack's binaries from Debian and a virtualenv
# with carbonwatch installed. Safe to run again; does only what is missing.
#   scripts/setup.sh          runtime (demo)
#   scripts/setup.sh test     also test tools and the CPU build of PyTorch for the training tests
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-runtime}

need=()
for bin in prometheus promtool prometheus-pushgateway prometheus-alertmanager amtool; do
  command -v "$bin" >/dev/null 2>&1 || need+=("$bin")
done
pkgs=()
if [ ${#need[@]} -gt 0 ]; then pkgs+=(prometheus prometheus-pushgateway prometheus-alertmanager); fi
# VictoriaMetrics, vmagent and vmalert: the remote-ruler path (docs/stack.md, tests/monitoring/test_remote_ruler.py).
for bin in victoria-metrics vmagent vmalert; do
  command -v "$bin" >/dev/null 2>&1 || { pkgs+=(victoria-metrics); break; }
done
if [ "$mode" = test ]; then
  command -v prometheus-process-exporter >/dev/null 2>&1 || pkgs+=(prometheus-process-exporter)
  command -v docker-compose >/dev/null 2>&1 || pkgs+=(docker-compose)
  # PostgreSQL 15: the ledger's tests start a throwaway cluster (tests/ledger/postgres.py).
  [ -x /usr/lib/postgresql/15/bin/initdb ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || pkgs+=(postgresql)
fi
if [ ${#pkgs[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing Debian packages: ${pkgs[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

# `kubectl kustomize` renders deploy/kubernetes/ in the tests (kustomize v5: Debian's old kubernetes-client is
# too old); where no kubectl package is offered those tests are skipped.
if [ "$mode" = test ] && ! command -v kubectl >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends kubectl >/dev/null 2>&1 \
    || echo "setup: kubectl not installable here; deploy/kubernetes tests will be skipped"
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
py=.venv/bin/python
# Installed distributions, by name (importing keras would need TensorFlow, importing torch takes seconds).
have() { $py - "$@" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, distribution
try:
    for name in sys.argv[1:]:
        distribution(name)
except PackageNotFoundError:
    sys.exit(1)
PY
}
# carbonwatch and every dependency pyproject.toml names now (runtime, plus the `test` extra for tests):
# `pip install -e` only when one of them is missing.
have_project() { $py - "$@" <<'PY'
import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
wanted = ["carbonwatch", *project.get("dependencies", [])]
for extra in sys.argv[1:]:
    wanted += project.get("optional-dependencies", {}).get(extra, [])
try:
    for req in wanted:
        distribution(re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0])
except PackageNotFoundError:
    sys.exit(1)
PY
}
if [ "$mode" = test ]; then
  have_project test || $py -m pip install -q --disable-pip-version-check -e '.[test]'
  # CPU build of PyTorch for the end-to-end training tests (installed from local disk where offered).
  have torch || $py -m pip install -q --disable-pip-version-check 'torch==2.13.0' \
    || echo "setup: torch==2.13.0 not installable here; training tests will be skipped"
  # The frameworks whose callbacks we ship, so their tests run against the real packages.
  have lightning transformers accelerate keras \
    || $py -m pip install -q --disable-pip-version-check 'torch==2.13.0' 'lightning==2.6.6' 'transformers==5.23.0' \
         'accelerate==1.15.0' 'keras==3.15.1' \
    || echo "setup: framework packages not installable here; their callback tests will be skipped"
else
  have_project || $py -m pip install -q --disable-pip-version-check -e .
fi
echo "setup: ready ($($py -c 'import carbonwatch; print("carbonwatch", carbonwatch.__version__)'))"
