"""Processes of the native stack: start a service detached (its own session, log in the state directory), know
it again by pid and start time, wait for its readiness URL, stop its process group."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from carbonwatch.stack.services import NO_PORT, Service, StackState

if TYPE_CHECKING:
    from carbonwatch.stack.config import SecureFiles

_CHILDREN: list[subprocess.Popen[bytes]] = []  # kept so that they are not reported as leaked while we wait


def process_start_ticks(pid: int) -> int:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot); 0 when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[19])


def alive(svc: Service) -> bool:
    """The very process we started is still there (not a zombie, not a reused pid)."""
    if svc.pid <= 0 or process_start_ticks(svc.pid) != svc.start_ticks:
        return False
    try:
        state = Path(f"/proc/{svc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def is_ready(svc: Service, timeout: float = 2.0, secure: SecureFiles | None = None) -> bool:
    """The service answers its readiness URL (over TLS, with the password and client certificate of a
    --secure stack's `secure` files where it is protected)."""
    if svc.name in NO_PORT:
        return alive(svc)
    verify: bool | str = True
    auth: tuple[str, str] | None = None
    cert: tuple[str, str] | None = None
    if svc.scheme == "https" and secure is not None:
        verify, auth = str(secure.ca_cert), (secure.username, secure.password())
        cert = (str(secure.client_cert), str(secure.client_key))
    try:
        return requests.get(svc.ready_url, timeout=timeout, verify=verify, auth=auth, cert=cert).status_code == 200
    except (requests.RequestException, OSError):
        return False


def log_tail(path: str, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def start(svc: Service, env: dict[str, str] | None = None) -> None:
    Path(svc.log).parent.mkdir(parents=True, exist_ok=True)
    with open(svc.log, "ab") as log:
        proc = subprocess.Popen(
            svc.cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session and process group: `up` returns, `down` signals the group
            env={**os.environ, **(env or {})},
        )
    _CHILDREN.append(proc)
    svc.pid = proc.pid
    svc.start_ticks = process_start_ticks(proc.pid)


def stop(svc: Service, grace: float = 10.0) -> bool:
    """SIGTERM to the service's process group, SIGKILL after `grace` seconds. False if it was not running."""
    if not alive(svc):
        return False
    try:
        os.killpg(svc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(svc.pid)
        if not alive(svc):
            return True
        time.sleep(0.1)
    try:
        os.killpg(svc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap(svc.pid)
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_ready(services: list[Service], timeout: float, secure: SecureFiles | None = None) -> list[str]:
    """Wait until each service answers its readiness URL; the problems of those that do not."""
    deadline = time.monotonic() + timeout
    pending = list(services)
    while pending and time.monotonic() < deadline:
        for svc in list(pending):
            _reap(svc.pid)
            if not alive(svc):
                return [f"{svc.name} exited while starting; the end of {svc.log}:\n{log_tail(svc.log)}"]
            if is_ready(svc, timeout=1.0, secure=secure):
                pending.remove(svc)
        if pending:
            time.sleep(0.25)
    return [f"{s.name} not ready at {s.ready_url} after {timeout:g}s; see {s.log}" for s in pending]


def running_state(state_dir: Path) -> StackState | None:
    st = StackState.load(state_dir)
    if st is None:
        return None
    return st if any(alive(s) for s in st.services.values()) else None
