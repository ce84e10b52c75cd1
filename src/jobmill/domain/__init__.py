"""The pure core: job model, statuses, the transition table and the claim order. No I/O here."""

from jobmill.domain.job import Job, JobEvent, JobStatus, NewJob
from jobmill.domain.transitions import TERMINAL, Transition, transition_for

__all__ = ["TERMINAL", "Job", "JobEvent", "JobStatus", "NewJob", "Transition", "transition_for"]
