"""Helpers shared by the tests (fixtures built on them live in conftest.py): free ports, waiting for a
condition, and a real Prometheus on loopback fed the repository's own configuration and rules."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports on 127.0.0.1 (all held open while choosing, so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def eventually(check: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """Call `check` until it returns something truthy (returned) or `timeout` passes (AssertionError naming
    `what` and the last value). An OSError from `check` counts as not yet."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:g}s (last: {last!r})")


def http_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def stop_process(proc: subprocess.Popen[Any], grace: float = 10.0) -> int:
    """SIGTERM, then SIGKILL after `grace` seconds; the exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


class Prometheus:
    """A real Prometheus on 127.0.0.1. `Prometheus(tmp, targets)` scrapes `targets` (job -> host:port list)
    every `interval` with the repository's rules rendered for that interval (carbonwatch.stack.config);
    `Prometheus.serving(tmp, tsdb)` only serves an existing TSDB (e.g. blocks made with promtool)."""

    def __init__(self, tmp: Path, targets: Mapping[str, Sequence[str]], interval: str = "1s",
                 alertmanagers: Sequence[str] = ()) -> None:
        from carbonwatch.stack.config import render_prometheus_config, render_rules

        rules_dir = tmp / "rules"
        render_rules(REPO, rules_dir, interval)
        (tmp / "prometheus.yml").write_text(render_prometheus_config(
            REPO, {k: list(v) for k, v in targets.items()}, list(alertmanagers), interval, interval, rules_dir))
        self._start(tmp, tmp / "tsdb")

    @classmethod
    def from_series(cls, tmp: Path, series: Mapping[str, Sequence[tuple[str, float, int]]]) -> Prometheus:
        """Serve `series` (name -> [(labels, value, unix seconds)]), written as TSDB blocks by promtool."""
        lines = []
        for name, samples in series.items():
            lines.append(f"# TYPE {name} gauge")
            lines += [f"{name}{{{labels}}} {value} {t}" for labels, value, t in samples]
        (tmp / "series.om").write_text("\n".join(lines + ["# EOF"]) + "\n")
        subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(tmp / "series.om"),
                        str(tmp / "data")], check=True, capture_output=True, timeout=120)
        return cls.serving(tmp, tmp / "data")

    @classmethod
    def serving(cls, tmp: Path, tsdb: Path, args: Sequence[str] = ()) -> Prometheus:
        """Serve `tsdb`; `args`: more Prometheus flags (e.g. a retention)."""
        self = cls.__new__(cls)
        (tmp / "prometheus.yml").write_text("global: {}\n")
        self._start(tmp, tsdb, args)
        return self

    def _start(self, tmp: Path, tsdb: Path, args: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "prometheus.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["prometheus", f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tsdb}",
                 f"--web.listen-address=127.0.0.1:{self.port}", *args], stdout=log, stderr=subprocess.STDOUT)
        try:
            eventually(lambda: self.proc.poll() is None and http_ok(self.url + "/-/ready"), 60, "prometheus ready")
        except AssertionError:
            self.stop()
            raise AssertionError(f"prometheus did not start:\n{self.log.read_text()[-2000:]}") from None

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        r.raise_for_status()
        result: list[dict[str, Any]] = r.json()["data"]["result"]
        return result

    def stop(self) -> None:
        stop_process(self.proc)


CONFIG_ERRORS = Path(__file__).resolve().parent / "fixtures" / "config-errors"


def config_error_cases(kind: str) -> list[tuple[Path, str]]:
    """(file, the text its error must contain) for each fixture in tests/fixtures/config-errors/<kind>/: one
    file per config mistake, its first line `# expect: TEXT`."""
    cases = []
    for f in sorted((CONFIG_ERRORS / kind).iterdir()):
        first = f.read_text().splitlines()[0]
        assert first.startswith("# expect: "), f
        cases.append((f, first[len("# expect: "):]))
    return cases


def run_cli(capsys: Any, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """`carbonwatch ARGV...` in this process, as the console script runs it: (exit status, stdout, stderr)."""
    from carbonwatch import cli

    capsys.readouterr()
    try:
        rc = cli.main(list(argv))
    except SystemExit as exc:
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(argv), rc, out, err)
