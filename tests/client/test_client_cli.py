"""`carbonwatch run` and `carbonwatch runs` as a user runs them: real child processes, real signals, a real
Pushgateway."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.client.test_client_pushgateway import BINARY, Gateway, free_port, one, wait_for

pytestmark = pytest.mark.slow  # `carbonwatch run` processes, some with a real Pushgateway

PY = sys.executable


def cw(*args: str, env: dict[str, str] | None = None, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PY, "-m", "carbonwatch", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        **kw,  # type: ignore[call-overload]
    )


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    if BINARY is None:
        pytest.skip("prometheus-pushgateway is not installed")
    g = Gateway(tmp_path)
    g.start()
    try:
        yield g
    finally:
        g.kill()


def records(env: dict[str, str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in Path(env["CARBONWATCH_RUNS_FILE"]).read_text().splitlines()]


def finish(p: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    return p.returncode, out, err


@pytest.mark.parametrize("code", [0, 3, 42])
def test_exit_code_of_the_command_is_passed_through(env: dict[str, str], code: int) -> None:
    rc, out, err = finish(cw("run", "--run-id", f"exit-{code}", "--", PY, "-c", f"import sys; sys.exit({code})",
                             env=env))
    assert rc == code, err
    rec = records(env)[-1]
    assert rec["run_id"] == f"exit-{code}" and rec["exit_code"] == code
    assert rec["status"] == ("succeeded" if code == 0 else "failed")
    assert f"carbonwatch run exit-{code}: " in err  # the summary


def test_command_killed_by_a_signal_gives_128_plus_n(env: dict[str, str]) -> None:
    rc, _, err = finish(cw("run", "--", PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)", env=env))
    assert rc == 128 + signal.SIGKILL, err
    assert records(env)[-1]["status"] == "failed"


def test_missing_command_and_bad_flags_exit_2_or_127(env: dict[str, str]) -> None:
    rc, _, err = finish(cw("run", env=env))
    assert rc == 2 and "command: nothing to run" in err
    rc, _, err = finish(cw("run", "--user", "bad\x01user", "--", "true", env=env))
    assert rc == 2 and "user:" in err
    rc, _, err = finish(cw("run", "--run-id", "../etc", "--", "true", env=env))
    assert rc == 2 and "run_id:" in err
    rc, _, err = finish(cw("run", "--", "no-such-command-xyz", env=env))
    assert rc == 127 and "no-such-command-xyz" in err


def test_run_id_and_gateway_reach_the_command_and_labels_are_visible_while_it_runs(
    env: dict[str, str], gateway: Gateway, tmp_path: Path
) -> None:
    seen = tmp_path / "child-env.json"
    script = textwrap.dedent(f"""
        import json, os, subprocess, sys, time
        grandchild = subprocess.run([sys.executable, "-c", "import os; print(os.environ['CARBONWATCH_RUN_ID'])"],
                                    capture_output=True, text=True).stdout.strip()
        json.dump({{"self": os.environ.get("CARBONWATCH_RUN_ID"), "grandchild": grandchild,
                   "gw": os.environ.get("CARBONWATCH_PUSHGATEWAY"),
                   "labels": [os.environ.get("CARBONWATCH_" + k) for k in ("USER", "PROJECT", "MODEL", "TEAM")]}},
                  open({str(seen)!r}, "w"))
        time.sleep(1.5)
    """)
    env = dict(env, CARBONWATCH_MODEL="stale-from-the-shell")
    p = cw("run", "--pushgateway", gateway.url, "--run-id", "cli-live", "--model", "mlp", "--project", "demo",
           "--budget-grams", "100", "--", PY, "-c", script, env=env)
    try:
        s = wait_for(lambda: gateway.samples("cli-live").get("carbonwatch_run_info"), what="run info")
        labels = s[0][0]
        assert (labels["user"], labels["model"], labels["project"], labels["status"]) == (
            "alice", "mlp", "demo", "running")
        assert one(gateway.samples("cli-live"), "carbonwatch_run_budget_grams")[1] == 100
    finally:
        rc, _, err = finish(p)
    assert rc == 0, err
    assert json.loads(seen.read_text()) == {"self": "cli-live", "grandchild": "cli-live", "gw": gateway.url,
                                            "labels": ["alice", "demo", "mlp", None]}
    # The final state stays on the gateway for a later sweep; no process of the run is left behind.
    assert one(gateway.samples("cli-live"), "carbonwatch_run_info")[0]["status"] == "succeeded"
    assert processes_of("cli-live") == []


def processes_of(run_id: str) -> list[str]:
    """Command lines of the live processes that mention `run_id` (a left-behind clean-up process would)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if run_id in cmd:
                out.append(cmd)
    return out


def test_sigterm_to_the_wrapper_reaches_the_command_and_the_run_ends_stopped(
    env: dict[str, str], gateway: Gateway, tmp_path: Path
) -> None:
    marker = tmp_path / "got"
    script = textwrap.dedent(f"""
        import signal, sys, time
        def on_term(signum, frame):
            open({str(marker)!r}, "w").write(str(signum))
            sys.exit(143)
        signal.signal(signal.SIGTERM, on_term)
        open({str(marker)!r} + ".ready", "w").close()
        time.sleep(30)
    """)
    env = dict(env, CARBONWATCH_CONFIG="")  # default retention: the final state stays to be checked
    p = cw("run", "--pushgateway", gateway.url, "--run-id", "cli-term", "--", PY, "-c", script, env=env)
    try:
        wait_for(lambda: Path(str(marker) + ".ready").exists(), what="the command to start")
        wait_for(lambda: gateway.samples("cli-term").get("carbonwatch_run_info"), what="first push")
        p.send_signal(signal.SIGTERM)
    finally:
        rc, _, err = finish(p, timeout=20)
    assert rc == 143, err
    assert marker.read_text() == str(int(signal.SIGTERM))
    labels, _ = one(gateway.samples("cli-term"), "carbonwatch_run_info")
    assert labels["status"] == "stopped"
    assert "carbonwatch_run_end_time_seconds" in gateway.samples("cli-term")
    rec = records(env)[-1]
    assert rec["status"] == "stopped" and rec["exit_code"] == 143
    assert processes_of("cli-term") == []


def test_budget_stop_interrupts_the_command_like_ctrl_c(env: dict[str, str], tmp_path: Path) -> None:
    marker = tmp_path / "interrupted"
    script = textwrap.dedent(f"""
        import time
        try:
            t = time.time()
            while time.time() - t < 30:
                sum(i * i for i in range(10000))
        except KeyboardInterrupt:
            open({str(marker)!r}, "w").write("checkpointed")
            raise SystemExit(130)
    """)
    t0 = time.monotonic()
    rc, _, err = finish(cw("run", "--run-id", "cli-budget", "--budget-grams", "0.000001", "--on-budget", "stop",
                           "--", PY, "-c", script, env=env), timeout=40)
    assert rc == 130, err
    assert time.monotonic() - t0 < 20
    assert marker.read_text() == "checkpointed"
    said = [line for line in err.splitlines() if "exceeded its carbon budget" in line]
    assert len(said) == 1, err  # once, with figures that tell how far over
    assert re.search(r"run cli-budget exceeded its carbon budget: [0-9.]+ m?g CO2e of 0\.000001 g \([0-9,.]+ %\); "
                     r"stopping the command \(SIGINT", said[0]), said[0]
    assert "0.000 g" not in err
    rec = records(env)[-1]
    assert rec["status"] == "stopped" and rec["over_budget"] is True
    assert rec["emissions_grams"] > 0.000001  # type: ignore[operator]


def test_in_code_api_inside_the_wrapper_adds_progress_to_the_same_group(
    env: dict[str, str], gateway: Gateway, tmp_path: Path
) -> None:
    script = textwrap.dedent("""
        import time, carbonwatch
        with carbonwatch.run(model="ignored-inside", push_interval=0.05) as run:
            run.epoch(3)
            run.progress(samples=128, loss=0.125)
            time.sleep(1.5)
    """)
    env = dict(env, CARBONWATCH_CONFIG="")
    p = cw("run", "--pushgateway", gateway.url, "--run-id", "cli-nested", "--model", "outer", "--", PY, "-c",
           script, env=env)
    try:
        s = wait_for(
            lambda: (x := gateway.samples("cli-nested")).get("carbonwatch_run_info")
            and x.get("carbonwatch_run_epoch") and x,
            what="info from the wrapper and progress from the script",
        )
        assert one(s, "carbonwatch_run_info")[0]["model"] == "outer"
        assert one(s, "carbonwatch_run_epoch")[1] == 3
        assert one(s, "carbonwatch_run_samples_total")[1] == 128
    finally:
        rc, _, err = finish(p)
    assert rc == 0, err
    s = gateway.samples("cli-nested")
    assert one(s, "carbonwatch_run_info")[0]["status"] == "succeeded"
    assert one(s, "carbonwatch_run_samples_total")[1] == 128  # the wrapper's final push kept the progress
    assert len(records(env)) == 1  # one record per run: the script's client leaves it to the wrapper


def test_local_mode_measures_the_command_and_runs_lists_it_as_table_and_csv(env: dict[str, str]) -> None:
    burn = "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass\n"
    rc, _, err = finish(cw("run", "--run-id", "cli-local", "--zone", "FR", "--", PY, "-c", burn, env=env))
    assert rc == 0, err
    rec = records(env)[-1]
    assert rec["mode"] == "local"
    energy = rec["energy_joules"]
    assert isinstance(energy, dict) and energy.get("cpu", 0) > 0, rec
    assert rec["sources"]["cpu"] in ("rapl", "model")  # type: ignore[index]
    assert rec["zone"] == "FR"
    grams = float(rec["emissions_grams"])  # type: ignore[arg-type]
    assert grams == pytest.approx(sum(energy.values()) / 3.6e6 * float(rec["intensity_grams_per_kwh"]))  # type: ignore[arg-type]
    assert "energy cpu" in err and "car-km" in err
    assert "labels        reached no Pushgateway (none configured" in err
    rc, out, _ = finish(cw("runs", env=env))
    assert rc == 0 and "cli-local" in out and "succeeded" in out
    rc, out, _ = finish(cw("runs", "--format", "csv", env=env))
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["run_id"] for r in rows] == ["cli-local"]
    assert float(rows[0]["energy_cpu_joules"]) == pytest.approx(energy["cpu"])
    assert float(rows[0]["car_km"]) == pytest.approx(grams / (393.0 / 1.609344))


def test_dead_gateway_costs_the_command_nothing(env: dict[str, str]) -> None:
    t0 = time.monotonic()
    rc, _, err = finish(cw("run", "--pushgateway", f"127.0.0.1:{free_port()}", "--", PY, "-c", "print('ok')",
                           env=env))
    assert rc == 0
    assert time.monotonic() - t0 < 15
    assert "cannot push to the Pushgateway" in err
    assert records(env)[-1]["pushed"] is False
    said = [line for line in err.splitlines() if line.startswith("  labels ")]
    assert len(said) == 1 and "reached no Pushgateway: 127.0.0.1:" in said[0] and "did not answer" in said[0], err
    assert "Traceback" not in err


def test_with_a_live_node_exporter_the_wrapper_measures_nothing_itself(env: dict[str, str], tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "exporter.alive").touch()  # what a running node exporter keeps fresh
    burn = "import time\nt = time.time()\nwhile time.time() - t < 1.0: pass\n"
    rc, _, err = finish(cw("run", "--run-id", "cli-node", "--project", "p", "--", PY, "-c", burn, env=env))
    assert rc == 0, err
    assert "run id cli-node (measured by the node exporter)" in err
    assert "measured by the node exporter, not in this process" in err and "energy cpu" not in err
    assert "the node exporter publishes them from the command's environment" in err
    rec = records(env)[-1]
    assert (rec["measurement"], rec["energy_joules"], rec["emissions_grams"]) == ("node exporter", {}, None)
    rc, out, _ = finish(cw("runs", env=env))  # a record without figures lists them as unknown, not 0
    row = next(line for line in out.splitlines() if line.startswith("cli-node"))
    assert row.split()[-2:] == ["-", "-"]


def test_an_unknown_zone_is_refused_before_the_command_starts(env: dict[str, str], tmp_path: Path) -> None:
    started = tmp_path / "started"
    rc, _, err = finish(cw("run", "--zone", "XX", "--", PY, "-c", f"open({str(started)!r}, 'w')", env=env))
    assert rc == 2 and not started.exists()
    assert "zone: 'XX' is not a known grid zone" in err and "carbonwatch intensity --list-zones" in err


def test_wait_below_starts_the_command_once_the_grid_is_clean_enough(env: dict[str, str], tmp_path: Path) -> None:
    values = tmp_path / "intensity.yml"
    values.write_text("DE: 400\n")
    cfg = tmp_path / "wait.yml"
    cfg.write_text(f"intensity:\n  provider: file\n  file: {values}\n")
    started = tmp_path / "started"
    env = dict(env, CARBONWATCH_CONFIG=str(cfg))
    p = cw("run", "--zone", "DE", "--wait-below", "100", "--poll", "0.1s", "--max-wait", "30s", "--", PY, "-c",
           f"import time; open({str(started)!r}, 'w').write(repr(time.time()))", env=env)
    first = ""
    try:
        assert p.stderr is not None
        while "waiting for" not in first and "starting" not in first:  # the first check, however late it comes
            first = p.stderr.readline()
            assert first, "carbonwatch run ended before it said it waits"
        assert not started.exists()  # still waiting at 400 g/kWh
        values.write_text("DE: 50\n")
        cleaned = time.time()
    finally:
        rc, _, rest = finish(p, timeout=30)
    err = first + rest
    assert rc == 0, err
    assert float(started.read_text()) >= cleaned
    assert "is 400 g/kWh (file), waiting for < 100" in err
    assert "grid intensity 50 g/kWh (file) is below the threshold" in err


def test_wait_below_gives_up_after_max_wait_and_starts_anyway(env: dict[str, str], tmp_path: Path) -> None:
    cfg = tmp_path / "static.yml"
    cfg.write_text("intensity:\n  provider: static\n  static_grams_per_kwh: 300\n")
    t0 = time.monotonic()
    rc, _, err = finish(cw("run", "--wait-below", "100", "--poll", "0.1s", "--max-wait", "0.5s", "--", "true",
                           env=dict(env, CARBONWATCH_CONFIG=str(cfg))))
    assert rc == 0, err
    assert 0.5 <= time.monotonic() - t0 < 10
    assert "waited the maximum, starting anyway" in err


def test_in_code_api_turns_sigterm_into_a_clean_stopped_run(env: dict[str, str], tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    script = textwrap.dedent(f"""
        import time, carbonwatch
        with carbonwatch.run(run_id="api-term", model="m") as run:
            open({str(ready)!r}, "w").close()
            while True:
                run.progress(samples=1)
                time.sleep(0.01)
    """)
    p = subprocess.Popen([PY, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(ready.exists, what="the script to start")
        p.send_signal(signal.SIGTERM)
    finally:
        rc, _, err = finish(p, timeout=20)
    assert rc == 143, err
    rec = records(env)[-1]
    assert rec["run_id"] == "api-term" and rec["status"] == "stopped" and rec["samples"] > 0  # type: ignore[operator]


def test_track_decorator_and_in_code_budget_stop_raise_keyboardinterrupt(env: dict[str, str]) -> None:
    script = textwrap.dedent("""
        import carbonwatch
        @carbonwatch.track(run_id="api-budget", budget_grams=1e-7, on_budget="stop")
        def train(carbonwatch_run):
            try:
                while True:
                    sum(i * i for i in range(10000))
            except KeyboardInterrupt:
                print("interrupted over_budget=%s" % carbonwatch_run.over_budget)
                raise
        try:
            train()
        except KeyboardInterrupt:
            pass
    """)
    p = subprocess.Popen([PY, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rc, out, err = finish(p, timeout=40)
    assert rc == 0, err
    assert "interrupted over_budget=True" in out
    rec = records(env)[-1]
    assert rec["run_id"] == "api-budget" and rec["status"] == "stopped" and rec["over_budget"] is True
