"""Every command `make demo` prints works as printed: its program exists and carbonwatch's own parser accepts
its arguments, whether or not `carbonwatch` is on PATH."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from carbonwatch.cli import build_parser
from carbonwatch.stack import demo
from carbonwatch.stack import launcher as stack
from carbonwatch.stack.launcher import Service, StackState

ROOT = Path(__file__).resolve().parents[2]


def fake_stack(tmp_path: Path) -> StackState:
    st = StackState(str(tmp_path / "state"), str(ROOT), 0.0, settings_file=str(tmp_path / "stack.env"))
    for name, port in (("prometheus", 19090), ("pushgateway", 19091), ("exporter", 19860)):
        st.services[name] = Service(name, port, [name])
    return st


def parse_printed(line: str) -> tuple[str, list[str]]:
    """The program of a printed command line and the carbonwatch arguments it gives (parsed as printed)."""
    argv = shlex.split(line)
    if argv[:3] == [sys.executable, "-m", "carbonwatch"]:
        prog, rest = argv[0], argv[3:]
    else:
        prog, rest = argv[0], argv[1:]
    found = shutil.which(prog)  # on PATH, or an executable path
    assert found is not None and os.access(found, os.X_OK), f"{prog!r} does not run as printed"
    if Path(found).name == "carbonwatch" or argv[1:3] == ["-m", "carbonwatch"]:
        build_parser(rest).parse_args(rest)  # SystemExit on anything carbonwatch would refuse
    return found, rest


@pytest.mark.parametrize("on_path", [False, True])
def test_every_printed_command_runs_as_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on_path: bool) -> None:
    script = Path(sys.executable).with_name("carbonwatch")
    if not script.exists():
        pytest.skip("no carbonwatch script in this environment")
    path = str(script.parent) if on_path else "/usr/bin:/bin"
    monkeypatch.setenv("PATH", path)
    args = demo.parse(["--state-dir", str(tmp_path / "state"), "--run-id", "demo-test"])
    cmds = demo.commands(args, fake_stack(tmp_path), "demo-test", ROOT)
    printed = {k: demo.sh(v) for k, v in cmds.items()}
    printed["up"] = demo.sh(demo.up_command(args))
    for key, line in printed.items():
        found, rest = parse_printed(line)
        assert Path(found).resolve() == script.resolve(), (key, line)
        assert line.split()[0] == ("carbonwatch" if on_path else str(script)), line
    assert shlex.split(printed["report"])[1:] == ["report", "demo-test", "--prometheus", "http://127.0.0.1:19090"]
    assert shlex.split(printed["down"])[1:] == ["stack", "down", "--state-dir", str(tmp_path / "state")]
    run = shlex.split(printed["run"])
    assert "--pushgateway=http://127.0.0.1:19091" in run and run[run.index("--") + 1] == sys.executable


def test_the_printed_commands_really_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not only parsed: `stack status` and `stack down` as printed, from another directory, do their job."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    args = demo.parse(["--state-dir", str(tmp_path / "state")])
    cmds = demo.commands(args, fake_stack(tmp_path), "demo-test", ROOT)
    for key, expect_rc, expect in (("status", 3, "no stack running"), ("down", 0, "nothing to stop")):
        proc = subprocess.run(demo.sh(cmds[key]), shell=True, capture_output=True, text=True, timeout=60,
                              cwd=tmp_path)  # fmt: skip
        assert proc.returncode == expect_rc, proc.stderr
        assert expect in proc.stdout


def test_every_service_with_a_port_gets_its_url_and_one_without_none(tmp_path: Path) -> None:
    """The launcher's reaper has no port, and services the launcher adds later (the ledger) have no label of
    their own here: the listing neither fails (it raised KeyError: 'reaper') nor drops them."""
    st = fake_stack(tmp_path)
    st.services["reaper"] = Service("reaper", 0, ["reaper"])
    st.services["ledger"] = Service("ledger", 19863, ["ledger"])
    st.services["newcomer"] = Service("newcomer", 19999, ["newcomer"])
    lines = demo.url_lines(st, "demo-test")
    text = "\n".join(lines)
    assert "reaper" not in text
    assert any(line.split()[0] == "Prometheus" and line.endswith("http://127.0.0.1:19090") for line in lines)
    assert any("Ledger" in line and line.endswith("http://127.0.0.1:19863") for line in lines)
    assert any(line.split()[0] == "newcomer" and line.endswith("http://127.0.0.1:19999") for line in lines)
    assert "http://127.0.0.1:19860/metrics" in text


def test_command_name_prefers_the_installation_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("carbonwatch")
    if not script.exists():
        pytest.skip("no carbonwatch script in this environment")
    other = tmp_path / "bin"
    other.mkdir()
    (other / "carbonwatch").write_text("#!/bin/sh\necho another checkout\n")
    (other / "carbonwatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{other}:/usr/bin:/bin")  # a different carbonwatch first on PATH
    assert stack.command_name() == str(script)
    monkeypatch.setenv("PATH", f"{script.parent}:/usr/bin:/bin")
    assert stack.command_name() == "carbonwatch"


def free_offset(ports: tuple[int, ...] = (9090, 9091, 9093, 9860, 9863, 3000)) -> int:
    """A port offset at which every port the stack may use (the ledger's included) is free."""
    import random
    import socket

    for _ in range(50):
        offset = random.randrange(20000, 50000)
        try:
            for port in ports:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        return offset
    pytest.skip("no free port offset found")


@pytest.mark.slow
def test_the_real_demo_ends_with_its_alert_in_alertmanager(tmp_path: Path) -> None:
    """`python -m carbonwatch.stack.demo` with the real launcher (reaper included) and real binaries: exit 0,
    every URL, the budget alert as Alertmanager holds it, the stop hint; the stack is stopped afterwards."""
    if shutil.which("prometheus") is None or shutil.which("prometheus-alertmanager") is None:
        pytest.skip("the Prometheus stack's binaries are not installed")
    state = tmp_path / "state"
    env = dict(os.environ, HOME=str(tmp_path / "home"), XDG_DATA_HOME=str(tmp_path / "data"),
               XDG_CONFIG_HOME=str(tmp_path / "config"))
    env.pop("CARBONWATCH_SPOOL_DIR", None)  # the stack's exporter watches the default spool
    env.pop("CARBONWATCH_STACK", None)
    down = [sys.executable, "-m", "carbonwatch", "stack", "down", "--state-dir", str(state)]
    offset = free_offset()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "carbonwatch.stack.demo", "--state-dir", str(state),
             f"--port-offset={offset}", "--run-id", "demo-e2e", "--alert-timeout=150"],
            env=env, capture_output=True, text=True, timeout=540, cwd=tmp_path,
        )
        out = proc.stdout
        print(out[-4000:], proc.stderr[-3000:])
        assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
        assert "CarbonwatchRunBudgetExceeded" in out and "reached Alertmanager" in out, out[-2000:]
        for name, port in (("Prometheus", 9090), ("Alertmanager", 9093), ("Pushgateway", 9091)):
            assert f"{name}" in out and f"http://127.0.0.1:{port + offset}" in out, out[-2000:]
        assert "Your runs report here" in out
        hint = out.rsplit("Stop it with:", 1)[1].strip().splitlines()[0]
        assert shlex.split(hint)[-4:] == ["stack", "down", "--state-dir", str(state)]
    finally:
        stopped = subprocess.run(down, env=env, capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert stack.running_state(state) is None


def checkout_with_script(tmp_path: Path) -> Path:
    """A checkout holding scripts/path.sh and an installed .venv/bin/carbonwatch (a stub that runs)."""
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "path.sh", root / "scripts" / "path.sh")
    script = root / ".venv" / "bin" / "carbonwatch"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\necho this checkout\n")
    script.chmod(0o755)
    return root


@pytest.mark.parametrize("where", ["home-bin", "nowhere"])
def test_make_path_links_where_path_already_looks_or_prints_the_exact_path(tmp_path: Path, where: str) -> None:
    root = checkout_with_script(tmp_path)
    home = tmp_path / "home"
    (home / "bin").mkdir(parents=True)
    path = f"{home / 'bin'}:/usr/bin:/bin" if where == "home-bin" else "/usr/bin:/bin"  # no ~/.local/bin on PATH
    env = {"HOME": str(home), "PATH": path}
    proc = subprocess.run(["bash", str(root / "scripts" / "path.sh")], env=env, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    if where == "home-bin":
        assert (home / "bin" / "carbonwatch").resolve() == (root / ".venv" / "bin" / "carbonwatch").resolve()
        assert f"carbonwatch is on PATH ({home / 'bin' / 'carbonwatch'}" in proc.stdout
        ran = subprocess.run(["bash", "-c", "carbonwatch"], env=env, capture_output=True, text=True, timeout=30)
        assert ran.stdout.strip() == "this checkout"  # as printed: a bare `carbonwatch` runs
    else:
        assert (home / ".local" / "bin" / "carbonwatch").is_symlink()
        exact = str(root / ".venv" / "bin" / "carbonwatch")
        assert f"Run {exact}" in proc.stdout
        ran = subprocess.run([exact], capture_output=True, text=True, timeout=30)
        assert ran.stdout.strip() == "this checkout"
