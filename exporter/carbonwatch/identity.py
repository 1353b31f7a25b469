"""Run identity of every process: which training run (and, on Kubernetes, which container) it belongs to.

Interface used by the sampler (filled in by the identity work; see docs/attribution.md):

    resolver.assign(readings, registrations) -> {pid: ProcessIdentity}

First match wins, and the winner is named in `RunIdentity.origin`:
`env` (CARBONWATCH_RUN_ID), `registration` (in-code client), `parent` (inherited), `kubernetes`, `slurm`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from carbonwatch.model import ProcessReading
from carbonwatch.registration import Registration


@dataclass(frozen=True)
class RunIdentity:
    run_id: str
    origin: str  # env | registration | parent | kubernetes | slurm
    labels: Mapping[str, str] = field(default_factory=dict)  # user, project, model, team: only those known


@dataclass(frozen=True)
class ContainerRef:
    namespace: str
    pod: str
    container: str
    pod_uid: str = ""


@dataclass(frozen=True)
class ProcessIdentity:
    run: RunIdentity | None = None
    container: ContainerRef | None = None


class IdentityResolver(Protocol):
    def assign(
        self, readings: Sequence[ProcessReading], registrations: Sequence[Registration]
    ) -> dict[int, ProcessIdentity]: ...
