"""The identities the resolver hands the sampler, and the resolver's interface."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from carbonwatch.contracts import ORIGINS
from carbonwatch.node.identity.kubelet import PodCacheStats
from carbonwatch.node.model import ProcessReading
from carbonwatch.node.registration import Registration

__all__ = ["ENV_LABELS", "LABELS", "ORIGINS", "SANDBOX", "ContainerRef", "IdentityResolver", "IdentityStats",
           "ProcessIdentity", "RunIdentity"]

LABELS = ("user", "project", "model", "team")
ENV_LABELS = {"user": "CARBONWATCH_USER", "project": "CARBONWATCH_PROJECT", "model": "CARBONWATCH_MODEL",
              "team": "CARBONWATCH_TEAM"}
SANDBOX = "POD"  # container label of a pod's sandbox, its runtime monitor, and containers not yet in the list


@dataclass(frozen=True)
class RunIdentity:
    run_id: str
    origin: str  # one of ORIGINS: env | registration | kubernetes | slurm
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


@dataclass
class IdentityStats:
    label_rejections: dict[tuple[str, str, str], int]
    kubelet: PodCacheStats | None
    cached_processes: int
    cached_jobs: int
    pods: int


class IdentityResolver(Protocol):
    def assign(
        self, readings: Sequence[ProcessReading], registrations: Sequence[Registration]
    ) -> dict[int, ProcessIdentity]: ...

    def start(self) -> None: ...

    def close(self) -> None: ...

    def stats(self) -> IdentityStats: ...
