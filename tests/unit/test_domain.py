"""The pure core: the transition table matches the DESIGN state machine, backoff, handler registry."""

from __future__ import annotations

import types
from uuid import uuid4

import pytest

import jobmill
from jobmill.domain.job import JobStatus, uuid7
from jobmill.domain.transitions import TERMINAL, TRANSITIONS, Transition, transition_for
from jobmill.errors import InvalidTransition, UnknownKind, ValidationError
from jobmill.handlers import HandlerRegistry, HandlerSpec, handler
from jobmill.service import RetryPolicy

S = JobStatus
# Every (from, to) pair the DESIGN state machine draws; nothing else may be reachable.
DESIGN_EDGES = {
    (S.PENDING, S.RUNNING),
    (S.RUNNING, S.COMPLETED),
    (S.RUNNING, S.PENDING),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.CANCELLING),
    (S.CANCELLING, S.CANCELLED),
    (S.PENDING, S.CANCELLED),
    (S.FAILED, S.PENDING),
    (S.CANCELLED, S.PENDING),
}


def test_table_draws_exactly_the_design_state_machine() -> None:
    edges = {(source, e.target) for e in TRANSITIONS.values() for source in e.sources}
    assert edges == DESIGN_EDGES


def test_terminal_states_only_leave_by_admin_requeue() -> None:
    assert {S.COMPLETED, S.FAILED, S.CANCELLED} == TERMINAL
    for transition, e in TRANSITIONS.items():
        if e.sources & TERMINAL:
            assert transition is Transition.REQUEUE
    assert S.COMPLETED not in TRANSITIONS[Transition.REQUEUE].sources


def test_transition_for_picks_the_allowed_candidate_or_raises() -> None:
    job_id = uuid4()
    assert transition_for("cancel", job_id, S.PENDING, Transition.CANCEL, Transition.REQUEST_CANCEL) is (
        Transition.CANCEL
    )
    assert transition_for("cancel", job_id, S.RUNNING, Transition.CANCEL, Transition.REQUEST_CANCEL) is (
        Transition.REQUEST_CANCEL
    )
    for status in TERMINAL:
        with pytest.raises(InvalidTransition) as info:
            transition_for("cancel", job_id, status, Transition.CANCEL, Transition.REQUEST_CANCEL)
        assert info.value.current is status and status.value in str(info.value)


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(base_s=1, max_s=10)
    assert [policy.delay_s(n, rand=lambda: 1.0) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 10]
    assert [policy.delay_s(n, rand=lambda: 0.0) for n in (1, 2, 3)] == [0.5, 1, 2]
    samples = {policy.delay_s(3) for _ in range(50)}
    assert len(samples) > 1 and all(2 <= s <= 4 for s in samples)


def test_uuid7_is_time_ordered_and_version_7() -> None:
    ids = [uuid7() for _ in range(200)]
    assert all(i.version == 7 for i in ids)
    assert [i.int >> 80 for i in ids] == sorted(i.int >> 80 for i in ids)
    assert len(set(ids)) == 200


def test_registry_defaults_conflicts_and_bad_names() -> None:
    registry = HandlerRegistry()

    @handler("a.kind", queue="q", timeout_s=3, max_attempts=2, registry=registry)
    async def first(ctx: object) -> None: ...

    spec = registry.get("a.kind")
    assert (spec.queue, spec.timeout_s, spec.max_attempts, spec.is_async) == ("q", 3, 2, True)
    assert registry.queues() == ["q"]
    with pytest.raises(UnknownKind):
        registry.get("missing")

    def other(ctx: object) -> None: ...

    with pytest.raises(ValidationError, match="registered twice"):
        registry.register(HandlerSpec("a.kind", other))
    registry.register(HandlerSpec("a.kind", first, queue="q"))  # the same function again is fine
    for bad in (
        HandlerSpec("bad kind", other),
        HandlerSpec("k", other, queue=""),
        HandlerSpec("k", other, max_attempts=0),
    ):
        with pytest.raises(ValidationError):
            registry.register(bad)


def test_public_api_is_explicit() -> None:
    assert sorted(jobmill.__all__) == sorted(set(jobmill.__all__))
    for name in jobmill.__all__:
        assert hasattr(jobmill, name), name
    public = {n for n in dir(jobmill) if not n.startswith("_")}
    submodules = {n for n in public if isinstance(getattr(jobmill, n), types.ModuleType)}
    assert public - submodules == set(jobmill.__all__)
