"""A throwaway PostgreSQL cluster for the ledger's tests: initdb + pg_ctl in a temporary directory on a free
port (as the `postgres` user when the tests run as root: PostgreSQL refuses to run as root)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from tests.support import free_port

BIN = Path(os.environ.get("CARBONWATCH_PG_BIN", "/usr/lib/postgresql/15/bin"))


def available() -> str:
    """"" when the binaries are here, else why not."""
    if not (BIN / "initdb").exists() or not (BIN / "pg_ctl").exists():
        return f"PostgreSQL binaries not found in {BIN} (apt-get install postgresql, or set CARBONWATCH_PG_BIN)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: PostgreSQL cannot be started as root"
    return ""


class Cluster:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="carbonwatch-pg-"))
        self.port = free_port()
        self.data = self.dir / "data"
        if os.geteuid() == 0:
            import pwd
            pw = pwd.getpwnam("postgres") if _has_user("postgres") else pwd.getpwnam("nobody")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.prefix = ["runuser", "-u", pw.pw_name, "--"]
        else:
            self.prefix = []
        self._run([str(BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "ledger", "--no-sync",
                   "-E", "UTF8", "--locale=C"])
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
        self._run([str(BIN / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"), "-w",
                   "start"])

    def _run(self, cmd: list[str]) -> None:
        r = subprocess.run(self.prefix + cmd, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {r.stdout[-1000:]}{r.stderr[-1000:]}")

    def new_database(self) -> str:
        """A fresh empty database's URL."""
        import psycopg
        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=ledger dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://ledger@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run([str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"])
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def _has_user(name: str) -> bool:
    import pwd
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
