"""`make demo` (python -m carbonwatch.demo): the stack, one small training run over its carbon budget, its report.

1. starts the native stack (`carbonwatch stack up`, short intervals so the demo takes a couple of minutes)
   unless one already runs from the state directory;
2. runs examples/train_mlp.py under `carbonwatch run` with a tiny budget, so the budget alert fires;
3. waits for the recorded series and prints `carbonwatch report` for the run, the alerts, and the URLs;
4. leaves the stack running and says how to stop it.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import requests

from carbonwatch import report, stack
from carbonwatch.errors import ConfigError


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m carbonwatch.demo", description=__doc__.splitlines()[0])
    p.add_argument("--state-dir", default=stack.default_state_dir(), help="the stack's state directory")
    p.add_argument("--budget-grams", type=float, default=0.001, help="the run's carbon budget (tiny: it is exceeded)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--steps-per-epoch", type=int, default=1500)
    p.add_argument("--sleep", type=float, default=0.002, help="seconds of pause per step: the run lasts >= 25s")
    p.add_argument("--interval", default="5s", help="scrape and evaluation interval of a stack the demo starts")
    p.add_argument("--port-offset", type=int, default=0, help="ports of a stack the demo starts: defaults + N")
    p.add_argument("--run-id", default=None, help="run id (default demo-<time>)")
    p.add_argument("--alert-timeout", type=float, default=90.0, help="seconds to wait for the budget alert")
    return p.parse_args(argv)


def sh(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def ensure_stack(args: argparse.Namespace) -> stack.StackState:
    state = Path(args.state_dir)
    st = stack.running_state(state.resolve())
    if st is None:
        cmd = [sys.executable, "-m", "carbonwatch", "stack", "up", "--state-dir", str(state)]
        cmd += [f"--scrape-interval={args.interval}", f"--evaluation-interval={args.interval}"]
        cmd += ["--alert-for=10s", "--alert-group-wait=5s", f"--port-offset={args.port_offset}"]
        print(f"$ {sh(cmd)}", flush=True)
        proc = subprocess.run(cmd)
        if proc.returncode != 0:
            raise SystemExit(proc.returncode)
        st = stack.running_state(state.resolve())
        if st is None:
            raise SystemExit("demo: the stack did not come up; see its logs in " + str(state / "logs"))
    else:
        print(f"demo: using the stack already running from {state}")
    for name in ("prometheus", "pushgateway"):
        if name not in st.services:
            raise SystemExit(f"demo: the running stack has no {name}")
    return st


def wait_for(prom: str, expr: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            body = requests.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=5).json()
            if body.get("data", {}).get("result"):
                return True
        except (requests.RequestException, ValueError):
            pass
        time.sleep(2)
    return False


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    root = stack.repo_root_default()
    st = ensure_stack(args)
    prom = st.services["prometheus"].url
    gateway = st.services["pushgateway"].url
    run_id = args.run_id or time.strftime("demo-%Y%m%d-%H%M%S")
    train = [sys.executable, str(root / "examples" / "train_mlp.py"), f"--epochs={args.epochs}"]
    train += [f"--steps-per-epoch={args.steps_per_epoch}", f"--sleep={args.sleep}", "--no-torch"]
    cmd = [sys.executable, "-m", "carbonwatch", "run", f"--pushgateway={gateway}", f"--prometheus={prom}"]
    cmd += [f"--run-id={run_id}", f"--budget-grams={args.budget_grams}", "--user=demo", "--project=carbonwatch-demo"]
    cmd += ["--model=mlp", "--"] + train
    print(f"\n$ {sh(cmd)}", flush=True)
    rc = subprocess.run(cmd).returncode
    if rc != 0:
        print(f"demo: the training run exited with {rc}", file=sys.stderr)
    sel = f'run_id="{run_id}"'
    print("\ndemo: waiting for Prometheus to record the run ...", flush=True)
    if not wait_for(prom, f"run_id:carbonwatch_emissions_grams:total{{{sel}}}", 60):
        print("demo: no recorded emissions for the run yet; is the exporter measuring? "
              f"(`carbonwatch stack status`, logs in {st.state_dir}/logs)", file=sys.stderr)  # fmt: skip
        return 1
    # The run's final push (status, end time) reaches Prometheus at the next scrape of the Pushgateway.
    wait_for(prom, f"carbonwatch_run_end_time_seconds{{{sel}}}", 30)
    alert = wait_for(prom, f'ALERTS{{alertname="CarbonwatchRunBudgetExceeded",alertstate="firing",{sel}}}',
                     args.alert_timeout)  # fmt: skip
    try:
        rep = report.collect(report.Prometheus(prom), run_id)
    except ConfigError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    print(f"\n$ carbonwatch report {run_id} --prometheus {prom}\n")
    print(report.render_table(rep))
    print(
        "\nBudget alert: "
        + ("CarbonwatchRunBudgetExceeded is firing (see Alertmanager)" if alert else "not (yet) firing")
    )
    print("\nURLs:")
    labels = {
        "prometheus": "Prometheus",
        "alertmanager": "Alertmanager",
        "pushgateway": "Pushgateway",
        "exporter": "exporter /metrics",
        "grafana": "Grafana",
    }
    for name, svc in st.services.items():
        extra = "/metrics" if name == "exporter" else ""
        print(f"  {labels[name]:<18} {svc.url}{extra}")
    if "grafana" in st.services:
        g = st.services["grafana"].url
        print(f"  {'run dashboard':<18} {g}/d/carbonwatch-run/carbonwatch-run?var-run_id={run_id}")
    else:
        print("  Grafana is not installed here: the dashboards are in grafana/dashboards (docs/dashboards.md),")
        print("  or use `docker compose up` to get Grafana with them provisioned.")
    carbonwatch = Path(sys.executable).with_name("carbonwatch")
    exe = str(carbonwatch) if carbonwatch.exists() else "carbonwatch"
    extra = "" if args.state_dir == stack.default_state_dir() else f" --state-dir {args.state_dir}"
    print(f"\nThe stack keeps running. Stop it with:  {exe} stack down{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
