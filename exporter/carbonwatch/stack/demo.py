"""`make demo` (python -m carbonwatch.stack.demo): the stack, one small training run over its carbon budget, its report.

1. starts the native stack (`carbonwatch stack up`, short intervals so the demo takes a couple of minutes)
   unless one already runs from the state directory;
2. runs examples/train_mlp.py under `carbonwatch run` with a tiny budget, so the budget alert fires;
3. waits for the recorded series and prints `carbonwatch report` for the run, the alerts, and the URLs;
4. leaves the stack running and says how to stop it; `stack up` wrote the settings file, so the user's own
   `carbonwatch run` and carbonwatch.run(...) report to the same stack.

Every command it prints runs as printed: `carbonwatch` is named by its full path unless the one on PATH is
this installation (`make path` links it into a directory already on PATH).

The budget alert is waited for where it reaches the user: Alertmanager (its v2 API), not only Prometheus.
Exit status: 0 once the alert reached Alertmanager; 3 when it did not within --alert-timeout (the report, URLs
and stop hint are printed all the same); 1 when Prometheus recorded nothing of the run.
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

from carbonwatch.errors import CarbonwatchError
from carbonwatch.promql import Prometheus
from carbonwatch.stack import launcher as stack
from carbonwatch.stack import report
from carbonwatch.stack.services import NO_PORT


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m carbonwatch.stack.demo", description=__doc__.splitlines()[0])
    p.add_argument("--state-dir", default=stack.default_state_dir(), help="the stack's state directory")
    p.add_argument("--budget-grams", type=float, default=0.001, help="the run's carbon budget (tiny: it is exceeded)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--steps-per-epoch", type=int, default=1500)
    p.add_argument("--sleep", type=float, default=0.002, help="seconds of pause per step: the run lasts >= 25s")
    p.add_argument("--interval", default="5s", help="scrape and evaluation interval of a stack the demo starts")
    p.add_argument("--port-offset", type=int, default=0, help="ports of a stack the demo starts: defaults + N")
    p.add_argument("--run-id", default=None, help="run id (default demo-<time>)")
    p.add_argument("--alert-timeout", type=float, default=180.0,
                   help="seconds to wait for the budget alert to reach Alertmanager")
    return p.parse_args(argv)


def sh(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def carbonwatch_cmd() -> list[str]:
    """argv prefix that runs this installation's `carbonwatch`, as it is best printed (stack.command_name)."""
    name = stack.command_name()
    return shlex.split(name) if name.endswith(" -m carbonwatch") else [name]


def commands(args: argparse.Namespace, st: stack.StackState, run_id: str, root: Path) -> dict[str, list[str]]:
    """The commands the demo runs or tells the user to run, by purpose (tests parse each as printed)."""
    prom = st.services["prometheus"].url
    gateway = st.services["pushgateway"].url
    cw = carbonwatch_cmd()
    train = [sys.executable, str(root / "examples" / "train_mlp.py"), f"--epochs={args.epochs}"]
    train += [f"--steps-per-epoch={args.steps_per_epoch}", f"--sleep={args.sleep}", "--no-torch"]
    run = cw + ["run", f"--pushgateway={gateway}", f"--prometheus={prom}", f"--run-id={run_id}"]
    run += [f"--budget-grams={args.budget_grams}", "--user=demo", "--project=carbonwatch-demo", "--model=mlp", "--"]
    extra = [] if args.state_dir == stack.default_state_dir() else ["--state-dir", str(args.state_dir)]
    out = {
        "run": run + train,
        "report": cw + ["report", run_id, "--prometheus", prom],
        "status": cw + ["stack", "status"] + extra,
        "down": cw + ["stack", "down"] + extra,
        "own_run": cw + ["run", "--user", "you", "--", "python", "train.py"],
    }
    return out


def up_command(args: argparse.Namespace) -> list[str]:
    """`carbonwatch stack up` with the demo's short intervals."""
    cmd = carbonwatch_cmd() + ["stack", "up", "--state-dir", str(args.state_dir)]
    cmd += [f"--scrape-interval={args.interval}", f"--evaluation-interval={args.interval}"]
    cmd += ["--alert-for=10s", "--alert-group-wait=5s", f"--port-offset={args.port_offset}"]
    return cmd


def ensure_stack(args: argparse.Namespace) -> stack.StackState:
    state = Path(args.state_dir)
    st = stack.running_state(state.resolve())
    if st is None:
        cmd = up_command(args)
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


def wait_for(prom: Prometheus, expr: str, timeout: float) -> bool:
    """True once `expr` has a result in Prometheus, False after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if prom.query(expr):
                return True
        except CarbonwatchError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(2)


ALERT = "CarbonwatchRunBudgetExceeded"


def alertmanager_alerts(url: str, run_id: str, timeout: float = 5.0) -> list[dict[str, object]]:
    """The active budget alerts for `run_id` that Alertmanager holds (its v2 API)."""
    params = [("filter", f'alertname="{ALERT}"'), ("filter", f'run_id="{run_id}"'), ("active", "true")]
    r = requests.get(f"{url}/api/v2/alerts", params=params, timeout=timeout)
    r.raise_for_status()
    body = r.json()
    return [a for a in body if isinstance(a, dict)] if isinstance(body, list) else []


def wait_for_alert(url: str, run_id: str, timeout: float) -> list[dict[str, object]]:
    """The run's budget alerts once they reached Alertmanager; [] after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = alertmanager_alerts(url, run_id)
            if found:
                return found
        except (requests.RequestException, ValueError):
            pass
        if time.monotonic() >= deadline:
            return []
        time.sleep(2)


SERVICE_LABELS = {
    "prometheus": "Prometheus",
    "alertmanager": "Alertmanager",
    "pushgateway": "Pushgateway",
    "exporter": "exporter /metrics",
    "grafana": "Grafana",
    "ledger": "Ledger",
}


def url_lines(st: stack.StackState, run_id: str) -> list[str]:
    """One line per service that serves HTTP (the reaper has no port), any service the launcher adds included."""
    out = []
    for name, svc in st.services.items():
        if name in NO_PORT or not svc.port:
            continue
        extra = "/metrics" if name == "exporter" else ""
        out.append(f"  {SERVICE_LABELS.get(name, name):<18} {svc.url}{extra}")
    if "grafana" in st.services:
        g = st.services["grafana"].url
        out.append(f"  {'run dashboard':<18} {g}/d/carbonwatch-run/carbonwatch-run?var-run_id={run_id}")
    else:
        out.append("  Grafana is not installed here: the dashboards are in grafana/dashboards (docs/dashboards.md),")
        out.append("  or use `docker compose up` to get Grafana with them provisioned.")
    return out


def alert_line(alerts: list[dict[str, object]], am_url: str | None, prom_url: str, timeout: float) -> str:
    if am_url is None:
        return "Budget alert: the running stack has no Alertmanager"
    if not alerts:
        return (f"Budget alert: {ALERT} did not reach Alertmanager within {timeout:.0f}s "
                f"(see {prom_url}/alerts and {am_url}/#/alerts)")
    a = alerts[0]
    labels = a.get("labels")
    sev = labels.get("severity", "?") if isinstance(labels, dict) else "?"
    since = str(a.get("startsAt", ""))[:19].replace("T", " ")
    return f"Budget alert: {ALERT} ({sev}) reached Alertmanager at {since} UTC: {am_url}/#/alerts"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    root = stack.repo_root_default()
    st = ensure_stack(args)
    prom = Prometheus(st.services["prometheus"].url)
    run_id = args.run_id or time.strftime("demo-%Y%m%d-%H%M%S")
    cmds = commands(args, st, run_id, root)
    cmd = cmds["run"]
    print(f"\n$ {sh(cmd)}", flush=True)
    rc = subprocess.run(cmd).returncode
    if rc != 0:
        print(f"demo: the training run exited with {rc}", file=sys.stderr)
    sel = f'run_id="{run_id}"'
    print("\ndemo: waiting for Prometheus to record the run ...", flush=True)
    if not wait_for(prom, f"run_id:carbonwatch_emissions_grams:total{{{sel}}}", 60):
        print("demo: no recorded emissions for the run yet; is the exporter measuring? "
              f"(`{sh(cmds['status'])}`, logs in {st.state_dir}/logs)", file=sys.stderr)  # fmt: skip
        return 1
    # The run's final push (status, end time) reaches Prometheus at the next scrape of the Pushgateway.
    wait_for(prom, f"carbonwatch_run_end_time_seconds{{{sel}}}", 30)
    am = st.services["alertmanager"].url if "alertmanager" in st.services else None
    print("demo: waiting for the budget alert to reach Alertmanager ...", flush=True)
    alerts = wait_for_alert(am, run_id, args.alert_timeout) if am else []
    try:
        rep = report.collect(prom, run_id)
    except CarbonwatchError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    print(f"\n$ {sh(cmds['report'])}\n")
    print(report.render_table(rep))
    print("\n" + alert_line(alerts, am, prom.url, args.alert_timeout))
    print("\nURLs:")
    print("\n".join(url_lines(st, run_id)))
    if st.settings_file:
        print(f"\nYour runs report here: your own runs now report to this stack too (settings in "
              f"{st.settings_file}), e.g.:\n  {sh(cmds['own_run'])}")  # fmt: skip
    if cmds["down"][0] != "carbonwatch":
        print(f"\n(`carbonwatch` is not on PATH here: `make path` links it where your PATH looks, or use "
              f"{cmds['down'][0]})")  # fmt: skip
    print(f"\nThe stack keeps running. Stop it with:  {sh(cmds['down'])}")
    return 0 if alerts else 3


if __name__ == "__main__":
    sys.exit(main())
