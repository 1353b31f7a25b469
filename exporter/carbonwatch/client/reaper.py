"""Retention of finished runs on the Pushgateway, enforced by a sweep (no process outlives a run).

A run's final state (status, end time) must stay on the gateway long enough to be scraped, so the run
cannot delete its own group as it exits. Instead every run client sweeps the gateway, in-process and
bounded by a deadline: once when it starts (on a daemon thread) and once after its final push. A sweep
deletes the `carbonwatch_run` groups that ended (they hold `carbonwatch_run_end_time_seconds`) and were
last pushed more than `retention` ago. Groups of runs still running, or killed without an end (the
CarbonwatchRunStale alert's business), are left alone.

The stack can enforce the retention without any run client (credentials from the CARBONWATCH_PUSHGATEWAY_*
variables): one sweep (cron), or a sweep every D as one of the stack's services, stopped with it:

    python -m carbonwatch.client.reaper --gateway URL [--retention 30s] [--timeout 2s] [--every 15s]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.exposition import delete_from_gateway

from carbonwatch.client import auth as pgauth
from carbonwatch.client.auth import PushgatewayAuth
from carbonwatch.contracts import PUSH_JOB, PUSHED_BY_NAME
from carbonwatch.durations import parse_duration
from carbonwatch.errors import ConfigError

log = logging.getLogger("carbonwatch.client")

JOB = PUSH_JOB
END_TIME = PUSHED_BY_NAME["carbonwatch_run_end_time_seconds"].name
PUSH_TIME = "push_time_seconds"  # set by the gateway on every successful push to a group (the gateway's name)
RETENTION = PUSHED_BY_NAME["carbonwatch_run_retention_seconds"].name  # a run's own retention, pushed with its state

Fetch = Callable[[str, float], bytes]  # (url, timeout) -> body
Delete = Callable[[str, float], None]  # (run_id, timeout), raises on failure
Handler = Callable[..., Callable[[], None]]  # a prometheus_client push handler (PushgatewayAuth.handler())


@dataclass
class SweepResult:
    deleted: list[str] = field(default_factory=list)
    kept: int = 0  # finished groups still inside their retention, and running ones
    error: str = ""  # why the sweep stopped early ("" when it went through)


def gateway_url(gateway: str) -> str:
    return (gateway if "://" in gateway else f"http://{gateway}").rstrip("/")


def _fetch(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (the configured gateway)
        body: bytes = resp.read(64 << 20)
        return body


def _value(group: Mapping[str, object], name: str) -> float | None:
    """The value of metric `name` in one group of the gateway's /api/v1/metrics (parsed JSON), else None."""
    entry = group.get(name)
    metrics = entry.get("metrics") if isinstance(entry, Mapping) else None
    first = metrics[0] if isinstance(metrics, list) and metrics else None
    value = first.get("value") if isinstance(first, Mapping) else None
    try:
        return float(value) if isinstance(value, (str, int, float)) else None
    except ValueError:
        return None


def expired(groups: Sequence[object], retention: float, now: float, job: str = JOB) -> tuple[list[str], int]:
    """The run ids of finished groups of `job` last pushed at least their retention before `now`, and how many
    groups of `job` are kept. `retention` is the gateway side's policy, the longest any group stays; a run
    that pushed a shorter `carbonwatch_run_retention_seconds` of its own goes sooner."""
    out: list[str] = []
    kept = 0
    for g in groups:
        if not isinstance(g, Mapping):
            continue
        labels = g.get("labels")
        if not isinstance(labels, dict) or labels.get("job") != job or not labels.get("run_id"):
            continue
        end = _value(g, END_TIME)
        pushed = _value(g, PUSH_TIME)
        if end is None:  # running, or killed without an end: not ours to forget
            kept += 1
            continue
        last = max(end, pushed if pushed is not None else end)
        own = _value(g, RETENTION)
        if now - last >= (min(own, retention) if own is not None and own >= 0 else retention):
            out.append(str(labels["run_id"]))
        else:
            kept += 1
    return out, kept


def sweep(
    gateway: str,
    retention: float,
    *,
    timeout: float = 2.0,
    deadline_s: float | None = None,
    keep: Sequence[str] = (),
    job: str = JOB,
    fetch: Fetch = _fetch,
    handler: Handler | None = None,
    delete: Delete | None = None,
    clock: Callable[[], float] = time.time,
) -> SweepResult:
    """Delete the finished groups past their retention. Never raises; the whole sweep takes at most
    `deadline_s` (default 2 x timeout) plus one request's timeout. `fetch` GETs the gateway's group list and
    `handler` (a prometheus_client push handler) sends the deletes: both carry the gateway's credentials."""
    res = SweepResult()
    start = time.monotonic()
    limit = start + (2 * timeout if deadline_s is None else deadline_s)
    url = gateway_url(gateway)

    def default_delete(run_id: str, t: float) -> None:
        if handler is None:
            delete_from_gateway(url, job=job, grouping_key={"run_id": run_id}, timeout=t)
        else:
            delete_from_gateway(url, job=job, grouping_key={"run_id": run_id}, timeout=t, handler=handler)

    remove = delete or default_delete
    try:
        body = json.loads(fetch(f"{url}/api/v1/metrics", timeout))
        groups = body.get("data") if isinstance(body, dict) else None
        if not isinstance(groups, list):
            raise ValueError("the gateway's /api/v1/metrics has no data list")
    except Exception as exc:
        res.error = f"{type(exc).__name__}: {exc}"
        return res
    ids, res.kept = expired(groups, retention, clock(), job)
    for run_id in ids:
        if run_id in keep:
            res.kept += 1
            continue
        left = limit - time.monotonic()
        if left <= 0:
            res.error = f"deadline reached with {len(ids) - len(res.deleted)} groups left"
            break
        try:
            remove(run_id, min(timeout, left))
            res.deleted.append(run_id)
        except Exception as exc:
            res.error = f"{type(exc).__name__}: {exc}"
            break
    return res


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="carbonwatch-reaper", description="delete finished runs' Pushgateway "
                                "groups once their retention has passed (one sweep, then exit)")
    p.add_argument("--gateway", required=True, help="Pushgateway URL or HOST:PORT")
    p.add_argument("--retention", default="30s", help="how long a finished run's group stays (default 30s)")
    p.add_argument("--timeout", default="2s", help="per request (default 2s)")
    p.add_argument("--job", default=JOB)
    p.add_argument("--every", help="sweep every this long until SIGTERM or SIGINT (a stack service); "
                   "default: one sweep, then exit")
    a = p.parse_args(argv)
    try:
        retention, timeout = parse_duration(a.retention, "--retention"), parse_duration(a.timeout, "--timeout")
        every = parse_duration(a.every, "--every") if a.every else None
        if every is not None and every <= 0:
            raise ConfigError("--every: must be more than 0")
    except ConfigError as exc:
        print(f"carbonwatch-reaper: {exc}", file=sys.stderr)
        return 2
    try:  # the gateway's credentials from the environment, as the run client reads them
        auth = PushgatewayAuth(**pgauth.from_env(os.environ)).check()
    except ConfigError as exc:
        print(f"carbonwatch-reaper: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    if every is not None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    last_error = ""
    while True:
        res = sweep(a.gateway, retention, timeout=timeout, job=a.job, deadline_s=60.0, fetch=auth.fetch,
                    handler=auth.handler())
        for run_id in res.deleted:
            print(f"deleted {run_id}", flush=True)
        if res.error and res.error != last_error:  # a gateway that stays down is said once
            print(f"carbonwatch-reaper: {res.error}", file=sys.stderr, flush=True)
        last_error = res.error
        if every is None:
            return 1 if res.error else 0
        if stop.wait(every):
            return 0


if __name__ == "__main__":
    sys.exit(main())
