"""runevents: an event log store for runs."""

__version__ = "0.1.0"
