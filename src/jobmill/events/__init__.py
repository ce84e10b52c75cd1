"""Live job events: an in-process hub fed by a follower of the store's event log."""

from jobmill.events.follower import EventFollower
from jobmill.events.hub import EventHub, EventSubscription

__all__ = ["EventFollower", "EventHub", "EventSubscription"]
