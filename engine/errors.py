"""The engine's errors: one base, four kinds, each with a message for the physician.

Every error the engine raises on purpose is an :class:`EngineError`; a caller that shows
engine failures to a user (the CLI, the web app's ``engine_client``) catches that one
class, so a programming error (a ``ValueError`` or ``TypeError`` from a bug) is never
taken for a bad input and reaches the log with its traceback instead.

* :class:`InputError`: what the user gave cannot be used (an unreadable scan, a structure
  set that does not fit its series, a configuration with a bad field);
* :class:`ModelError`: the model asked for cannot be used (not shipped, a card that does
  not describe its weights);
* :class:`ExportError`: an output failed its own check or cannot be written in its format
  (an RTSTRUCT whose contours do not reproduce the label map);
* :class:`ToolError`: an external program the engine runs failed (elastix).

``message`` is the sentence for the physician; ``str(error)`` is the same text.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine raises on purpose; ``message`` is for the physician."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InputError(EngineError):
    """An input (scan, contours, configuration) that cannot be used as given."""


class ModelError(EngineError):
    """A model that cannot be used: not shipped, or its card and weights disagree."""


class ExportError(EngineError):
    """An output that cannot be written in its format or fails its own check."""


class ToolError(EngineError):
    """An external program the engine runs (elastix) is missing or failed."""
