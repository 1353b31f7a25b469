"""`carbonwatch run [flags] -- CMD ...`: track a training command without changing it.

CMD runs in its own process group with CARBONWATCH_RUN_ID set (the node exporter attributes it and its
children to the run), and CARBONWATCH_USER, CARBONWATCH_PROJECT, CARBONWATCH_MODEL and CARBONWATCH_TEAM set
from the flags (the node exporter can publish the run's labels from them, without a Pushgateway).
Signals sent to the wrapper (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2) are forwarded to that
process group; on a terminal the group is made the foreground group, so Ctrl-C reaches CMD directly. The
exit status of CMD is passed through (128+N when it died of signal N).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from types import FrameType

from carbonwatch.client.api import Run, new_run_id, wait_below
from carbonwatch.client.node import exporter_alive
from carbonwatch.client.settings import ON_BUDGET, RunSettings, resolve
from carbonwatch.durations import parse_duration
from carbonwatch.errors import ConfigError

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pushgateway", help="Pushgateway URL or HOST:PORT (env CARBONWATCH_PUSHGATEWAY); "
                   "none: local mode")
    p.add_argument("--prometheus", help="Prometheus URL (env CARBONWATCH_PROMETHEUS): budgets and the summary "
                   "read the run's recorded emissions")
    p.add_argument("--run-id", help="run id (default: generated and printed); the id of a finished run is refused "
                   "unless --resume")
    p.add_argument("--resume", action="store_true",
                   help="continue the finished run --run-id as its next segment (one run in `carbonwatch report`)")
    p.add_argument("--user", help="user label (env CARBONWATCH_USER, default: login name)")
    p.add_argument("--model", default="", help="model label (env CARBONWATCH_MODEL)")
    p.add_argument("--project", help="project label (env CARBONWATCH_PROJECT)")
    p.add_argument("--team", help="team label (env CARBONWATCH_TEAM)")
    p.add_argument("--zone", help="grid zone for the summary's emissions (env CARBONWATCH_ZONE, default world)")
    p.add_argument("--budget-grams", type=float, help="carbon budget of the run, grams CO2e")
    p.add_argument("--on-budget", choices=ON_BUDGET, help="when the budget is exceeded: warn (default) or "
                   "stop (SIGINT to the command, as Ctrl-C)")
    p.add_argument("--output", help="runs file to append this run to (env CARBONWATCH_RUNS_FILE)")
    p.add_argument("--retention", help="how long the final state stays on the Pushgateway (default 30s)")
    p.add_argument("--wait-below", type=float, metavar="G_PER_KWH",
                   help="wait until the zone's grid intensity is below this before starting")
    p.add_argument("--max-wait", default="6h", help="longest wait for --wait-below (default 6h)")
    p.add_argument("--poll", default="5m", help="how often --wait-below checks the intensity (default 5m)")
    p.add_argument("--no-local-meter", action="store_true",
                   help="never measure in this process (a live node exporter measures the run anyway, and then "
                   "no local meter runs)")
    p.add_argument("--quiet", action="store_true", help="no summary at the end")
    p.add_argument("--config.file", dest="config_file", help="YAML config (env CARBONWATCH_CONFIG), section run")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")


def _command(args: argparse.Namespace) -> list[str]:
    cmd = list(args.cmd or [])
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise ConfigError("command: nothing to run (usage: carbonwatch run [flags] -- CMD [ARGS...])")
    return cmd


def _on_terminal() -> bool:
    """Is the wrapper the foreground process group of the terminal on stdin?"""
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


def _foreground_preexec(tty: bool) -> Callable[[], None]:
    """In the child: own process group; on a terminal, make that group the foreground one."""

    def preexec() -> None:
        os.setpgid(0, 0)
        if tty:
            old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
            try:
                os.tcsetpgrp(0, os.getpgrp())
            except OSError:
                pass
            signal.signal(signal.SIGTTOU, old)

    return preexec


def main(args: argparse.Namespace) -> int:
    cmd = _command(args)
    if args.resume and not args.run_id:
        raise ConfigError("--resume: needs --run-id, the finished run to continue")
    settings = _settings(args)
    stop_requested: list[int] = []

    def on_budget(run: Run, grams: float) -> None:  # the run has said it exceeded the budget, once
        if settings.on_budget == "stop" and child is not None:
            stop_requested.append(signal.SIGINT)
            _killpg(child.pid, signal.SIGINT)

    run = Run(
        run_id=args.run_id or new_run_id(), model=args.model, budget_grams=args.budget_grams, on_budget=on_budget,
        settings=settings, root_pid=0, wrapper=True, summary=not args.quiet, resume=args.resume,
    )
    if settings.on_budget == "stop":
        run.on_budget_note = "stopping the command (SIGINT to its process group, as Ctrl-C)"
    where = " (measured by the node exporter)" if exporter_alive() else (
        "" if settings.pushgateway else " (local mode)")
    print(f"carbonwatch: run id {run.run_id}{where}", file=sys.stderr, flush=True)
    if args.wait_below is not None:
        _wait_below(args, settings)
    env = _child_env(run, settings)
    child: subprocess.Popen[bytes] | None = None
    try:
        tty = _on_terminal()
        child = subprocess.Popen(cmd, env=env, preexec_fn=_foreground_preexec(tty))
    except OSError as exc:
        print(f"carbonwatch run: cannot start {cmd[0]!r}: {exc.strerror or exc}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126
    run.root_pid = child.pid
    received: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        if child is not None:
            _killpg(child.pid, signum)

    old: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}
    for fsig in FORWARDED:
        old[fsig] = signal.signal(fsig, forward)
    try:
        run.start()
        rc = child.wait()
    finally:
        for num, handler in old.items():
            signal.signal(num, handler)
        if tty:
            _restore_foreground()
    code = 128 - rc if rc < 0 else rc
    status = _status(rc, bool(received or stop_requested))
    run.finish(status, exit_code=code)
    return code


def _settings(args: argparse.Namespace) -> RunSettings:
    return resolve(
        dict(
            pushgateway=args.pushgateway, prometheus=args.prometheus, user=args.user, project=args.project,
            team=args.team, zone=args.zone, runs_file=args.output, on_budget=args.on_budget,
            retention=args.retention, local_meter=False if args.no_local_meter else None,
        ),
        config_file=args.config_file,
    )


def _status(rc: int, interrupted: bool) -> str:
    """The run's status from the command's exit (rc < 0: killed by signal -rc)."""
    if rc == 0:
        return "succeeded"
    if interrupted or rc in (-signal.SIGINT, -signal.SIGTERM, 130, 143):
        return "stopped"
    return "failed"


def _wait_below(args: argparse.Namespace, settings: RunSettings) -> None:
    below, value, source = wait_below(
        args.wait_below, zone=settings.zone, max_wait=parse_duration(args.max_wait, "max-wait"),
        poll=max(0.05, parse_duration(args.poll, "poll")), intensity_cfg=settings.intensity,
        announce=lambda m: print(m, file=sys.stderr, flush=True),
    )
    print(
        f"carbonwatch: grid intensity {value:g} g/kWh ({source})"
        + (" is below the threshold; starting" if below else "; waited the maximum, starting anyway"),
        file=sys.stderr, flush=True,
    )


def _child_env(run: Run, settings: RunSettings) -> dict[str, str]:
    """The command's environment: the run id, and the run's labels, validated by Run (the node exporter reads
    them from the command's environment); the gateway and its credentials for the script's in-code client."""
    env = dict(os.environ, CARBONWATCH_RUN_ID=run.run_id, CARBONWATCH_RUN_WRAPPED="1")
    lab = run.labels
    for var, text in (("CARBONWATCH_USER", lab.user), ("CARBONWATCH_PROJECT", lab.project),
                      ("CARBONWATCH_MODEL", lab.model), ("CARBONWATCH_TEAM", lab.team)):
        if text:
            env[var] = text
        else:
            env.pop(var, None)
    if settings.pushgateway:
        env["CARBONWATCH_PUSHGATEWAY"] = settings.pushgateway
        env.update(settings.pushgateway_auth.child_env())
    return env


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        try:
            os.kill(pgid, sig)
        except OSError:
            pass


def _restore_foreground() -> None:
    try:
        if os.tcgetpgrp(0) != os.getpgrp():
            old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
            try:
                os.tcsetpgrp(0, os.getpgrp())
            finally:
                signal.signal(signal.SIGTTOU, old)
    except OSError:
        pass
