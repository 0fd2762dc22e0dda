"""Errors that slimzoo raises on bad input: each names the file and what is wrong."""
from __future__ import annotations


class SlimzooError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero."""


class DataError(SlimzooError):
    """A dataset file (image, list, annotation) is missing or malformed."""


class ConfigError(SlimzooError):
    """A recipe, config or command-line value is invalid."""


class CheckpointError(SlimzooError):
    """A checkpoint or model file cannot be loaded into the requested model."""


class OutputError(SlimzooError):
    """An output cannot be written where the user asked (a folder in the way, no permission, a full disk)."""
