"""Event plane backends (NATS, ZeroMQ) behind one interface; see ``base.EventPlane``."""

from dynamo.runtime.event_plane.base import EventPlane, subject_matches

__all__ = ["EventPlane", "subject_matches"]
