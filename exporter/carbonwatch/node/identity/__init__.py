"""Run identity of every process: which training run (and, on Kubernetes, which container) it belongs to.

Rooms: `model` (the identities and the resolver interface), `cleaning` (label values read from the node),
`resolver` (the chain below), `cgroups`, `kubelet`, `slurm`.

Interface used by the sampler (see docs/attribution.md):

    resolver.assign(readings, registrations) -> {pid: ProcessIdentity}

First match wins: the process's own CARBONWATCH_RUN_ID (origin `env`), a registration of it by the in-code
client (`registration`), its parent's run when that was named so (the child gets the parent's RunIdentity
as it is, so a run's origin is how the run was named, whichever of its processes is seen first), its pod
(`kubernetes`: the pod's run-id label, else its training job, else the pod), its SLURM job (`slurm`), else its
parent's run whatever its origin (a child always carries the origin by which its run was named: the origins
are contracts.ORIGINS). A process's container (Kubernetes) is found independently of its run.

Labels (user, project, model, team) come from the process's environment (CARBONWATCH_USER, ..._PROJECT,
..._MODEL, ..._TEAM, which `carbonwatch run` sets for its children), over those of its pod (configurable label
keys) or SLURM job. Every value read from the node is validated: a value with control characters, invalid
UTF-8, quotes or backslashes, or longer than 128 characters is dropped, counted by (source, label, reason) and
logged once; surrounding white space is trimmed.

`assign` only reads caches: the kubelet's pod list is refreshed by a background thread (`start()` / `close()`).
Per-process facts (environment, cgroup) are cached by (pid, start time) and expire when the process has not
been seen for `fact_ttl` seconds, so the caches stay bounded however many short pods or jobs come and go.
"""

from carbonwatch.node.identity.cleaning import LabelCleaner, label_problem
from carbonwatch.node.identity.model import (
    ENV_LABELS,
    LABELS,
    ORIGINS,
    SANDBOX,
    ContainerRef,
    IdentityResolver,
    IdentityStats,
    ProcessIdentity,
    RunIdentity,
)
from carbonwatch.node.identity.resolver import Resolver, build_resolver, run_infos

__all__ = ["ENV_LABELS", "LABELS", "ORIGINS", "SANDBOX", "ContainerRef", "IdentityResolver", "IdentityStats",
           "LabelCleaner", "ProcessIdentity", "Resolver", "RunIdentity", "build_resolver", "label_problem",
           "run_infos"]
