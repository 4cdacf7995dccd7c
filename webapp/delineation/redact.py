"""Exceptions as they may be logged: types and frames, never messages.

An exception's message can quote what the code was reading: a path under ``MEDIA_ROOT``
(whose last part is the uploaded file's name, often the patient's name or ID), a DICOM
value, a line of a file. Logs and error reports leave the data centre (log shippers,
e-mail to admins), so they get the traceback with each exception's type and none of
its message (docs/security.md, "No patient data in logs").
"""

from __future__ import annotations

import logging
import traceback

WITHHELD = "(message withheld: it may quote patient data)"


def traceback_without_messages(exc: BaseException) -> str:
    """The traceback of ``exc`` and of the exceptions it was raised from or during (as
    Python prints them), each exception shown by its type only. The frames show file,
    line and source code, never variable values."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not e for e in chain):
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    parts = []
    for e in reversed(chain):
        if parts:
            parts.append("\nThe above exception led to the following one:\n\n")
        parts.append("Traceback (most recent call last):\n")
        parts.extend(traceback.format_tb(e.__traceback__))
        parts.append(f"{type(e).__module__}.{type(e).__qualname__} {WITHHELD}\n")
    return "".join(parts).rstrip("\n")


class WithholdExceptionMessages(logging.Filter):
    """Logging filter (settings.LOGGING, on the console handler): a record's exception is
    rendered by :func:`traceback_without_messages`, whatever logger (Django's request
    logger, Celery's) produced it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = traceback_without_messages(record.exc_info[1])
            record.exc_info = None
        return True
