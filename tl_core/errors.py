"""One small hierarchy of errors the engine raises; pages turn them into plain-words messages."""

from __future__ import annotations


class StudioError(Exception):
    """Base class: the message is written for the person using the app, not for a developer."""


class DataError(StudioError):
    """The images a user brought cannot be used as they are (empty, one class, unsafe zip, ...)."""


class ModelUnavailableError(StudioError):
    """A model's weights cannot be had here (offline and not downloaded yet, unknown name)."""


class RunError(StudioError):
    """A training run cannot start or continue (missing project, bad settings, no checkpoint)."""


class CheckpointError(RunError):
    """A saved model or checkpoint cannot be read: damaged, cut short, or not made by this app."""


class DiskFullError(StudioError):
    """The disk holding the workspace has too little free space for what was asked."""
