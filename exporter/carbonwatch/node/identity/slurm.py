"""SLURM jobs as runs: `slurm-<cluster>-<jobid>`, found by the job's cgroup or SLURM_JOB_ID.

The cgroup (`/slurm/uid_N/job_M/...`, or `.../slurmstepd.scope/job_M/...` on cgroup v2) is set by slurmd and
cannot be changed by the job, so it wins over the environment, which the job's owner controls. Labels: user
from SLURM_JOB_USER or the job's uid, project from SLURM_JOB_ACCOUNT, model from SLURM_JOB_NAME (the run's own
CARBONWATCH_MODEL, when set, wins; see carbonwatch.node.identity).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from carbonwatch.errors import ConfigError
from carbonwatch.node.config import SLURM_CLUSTER_RE, SlurmConfig
from carbonwatch.node.identity.cgroups import CgroupInfo

JOB_ID_RE = re.compile(r"^\d{1,20}$")
DEFAULT_CLUSTER = "default"


def cluster_name(cfg: SlurmConfig, environ: Mapping[str, str]) -> str:
    """The cluster part of run ids: slurm.cluster, else the exporter's SLURM_CLUSTER_NAME, else "default"."""
    if cfg.cluster:
        return cfg.cluster
    env = environ.get("SLURM_CLUSTER_NAME", "")
    if env:
        if not SLURM_CLUSTER_RE.match(env):
            raise ConfigError(f"SLURM_CLUSTER_NAME: {env!r} is not a cluster name (letters, digits, '_', '.', '-')")
        return env
    return DEFAULT_CLUSTER


def run_id(cluster: str, job_id: str) -> str:
    return f"slurm-{cluster}-{job_id}"


def job_of(environ: Mapping[str, str], cg: CgroupInfo) -> tuple[str, int | None] | None:
    """(job id, owner uid or None) of a process, or None outside any job."""
    if cg.slurm_job:
        return cg.slurm_job, cg.slurm_uid
    job = environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID") or ""
    if not JOB_ID_RE.match(job):
        return None
    uid_raw = environ.get("SLURM_JOB_UID", "")
    return job, int(uid_raw) if uid_raw.isdigit() and len(uid_raw) <= 10 else None


def raw_labels(environ: Mapping[str, str]) -> dict[str, str]:
    """user / project / model from a job step's environment, unvalidated (carbonwatch.node.identity cleans them)."""
    out: dict[str, str] = {}
    for label, var in (("user", "SLURM_JOB_USER"), ("project", "SLURM_JOB_ACCOUNT"), ("model", "SLURM_JOB_NAME")):
        if environ.get(var):
            out[label] = environ[var]
    return out


def user_name(uid: int) -> str:
    """The login name of `uid` where this host knows it, else the number."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return str(uid)


def process_uid(proc_root: str, pid: int) -> int | None:
    try:
        return os.stat(f"{proc_root}/{pid}").st_uid
    except OSError:
        return None
