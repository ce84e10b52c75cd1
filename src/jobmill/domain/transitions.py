"""The job state machine: the one table every state change is checked against.

    pending ──claim──> running ──complete──> completed
       │                 │ ├──retry (error, attempts left)──> pending (run_after = backoff)
       │                 │ ├──fail (no attempts left, timeout)──> failed
       │                 │ ├──release (graceful shutdown; attempt not counted)──> pending
       │                 │ └──expire (lease lost: worker died)──> pending or failed (same rule as retry/fail)
       │                 └──request_cancel──> cancelling ──confirm_cancel──> cancelled
       │                                          └──expire_cancelling (worker died)──> cancelled
       └──cancel──> cancelled
    failed, cancelled ──requeue (admin retry)──> pending

The store receives `sources` and `target` from here with every write and applies them as a
compare-and-set, so the table is the only place that says which change is legal.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from uuid import UUID

from jobmill.domain.job import JobStatus
from jobmill.errors import InvalidTransition

P, R, X = JobStatus.PENDING, JobStatus.RUNNING, JobStatus.CANCELLING
C, F, K = JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED

TERMINAL = frozenset({C, F, K})


class Transition(StrEnum):
    CLAIM = "claim"
    COMPLETE = "complete"
    RETRY = "retry"
    FAIL = "fail"
    RELEASE = "release"
    EXPIRE_RETRY = "expire_retry"
    EXPIRE_FAIL = "expire_fail"
    EXPIRE_CANCELLING = "expire_cancelling"
    CANCEL = "cancel"
    REQUEST_CANCEL = "request_cancel"
    CONFIRM_CANCEL = "confirm_cancel"
    REQUEUE = "requeue"


@dataclass(frozen=True, slots=True)
class Edge:
    sources: frozenset[JobStatus]
    target: JobStatus


TRANSITIONS: dict[Transition, Edge] = {
    Transition.CLAIM: Edge(frozenset({P}), R),
    Transition.COMPLETE: Edge(frozenset({R}), C),
    Transition.RETRY: Edge(frozenset({R}), P),
    Transition.FAIL: Edge(frozenset({R}), F),
    Transition.RELEASE: Edge(frozenset({R}), P),
    Transition.EXPIRE_RETRY: Edge(frozenset({R}), P),
    Transition.EXPIRE_FAIL: Edge(frozenset({R}), F),
    Transition.EXPIRE_CANCELLING: Edge(frozenset({X}), K),
    Transition.CANCEL: Edge(frozenset({P}), K),
    Transition.REQUEST_CANCEL: Edge(frozenset({R}), X),
    Transition.CONFIRM_CANCEL: Edge(frozenset({X}), K),
    Transition.REQUEUE: Edge(frozenset({F, K}), P),
}


def edge(transition: Transition) -> Edge:
    return TRANSITIONS[transition]


def transition_for(action: str, job_id: UUID, current: JobStatus, *candidates: Transition) -> Transition:
    """The first candidate transition allowed from `current`; InvalidTransition when none is."""
    for candidate in candidates:
        if current in TRANSITIONS[candidate].sources:
            return candidate
    raise InvalidTransition(job_id, action, current)
