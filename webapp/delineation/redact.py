"""Exceptions as they may be logged: types and frames, never messages; pydicom's messages
without the values and paths they quote.

An exception's message can quote what the code was reading: a path under ``MEDIA_ROOT``
(whose last part is the uploaded file's name, often the patient's name or ID), a DICOM
value, a line of a file. Logs and error reports leave the data centre (log shippers,
e-mail to admins), so they get the traceback with each exception's type and none of
its message (docs/security.md, "No patient data in logs"). pydicom logs, and warns, about
malformed values by quoting them (a birth date written ``1961-04-12``), and about a file cut
short by its path: those parts are withheld, the rest of its message is kept.
"""

from __future__ import annotations

import logging
import logging.config
import re
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


VALUE_WITHHELD = "(value withheld)"
FILE_WITHHELD = "(file name withheld)"
_REPR = r"""b?(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")"""  # repr() of a str or bytes
# Every message of pydicom 3.0 that quotes a value it read, or the file's path, as the format
# string in its source, with what replaces the quoted part. A quoted part runs to the fixed text
# after it, or to the end of the record (in a warning, that drops the line of pydicom's source
# printed after the message too). tests/test_pydicom_warnings_in_logs.py has pydicom write each.
_QUOTING_MESSAGES = (
    # valuerep.validate_regex (DA, DT, TM, AS, AE, CS, DS, IS, UI, UR): "Invalid value for VR {vr}: {value!r}."
    (rf"(Invalid value for VR \w+: ){_REPR}", rf"\1{VALUE_WITHHELD}"),
    # valuerep.ISfloat, DSfloat, DSdecimal: 'Value "{self}" is not valid for elements with a VR of IS'
    (r'Value ".*"( is not valid for elements with a VR of )', rf"Value {VALUE_WITHHELD}\1"),
    # charset._warn_about_invalid_encoding (Specific Character Set):
    # "Unknown encoding '{encoding}' - using default encoding instead",
    # "Incorrect value for Specific Character Set '{encoding}' - assuming '{patched_encoding}'"
    (r"(Unknown encoding )'.*'( - using default encoding instead)", rf"\1{VALUE_WITHHELD}\2"),
    (r"(Incorrect value for Specific Character Set )'.*'( - assuming ')", rf"\1{VALUE_WITHHELD}\2"),
    # charset._handle_illegal_standalone_encodings: "Value '{encodings[0]}' for Specific Character Set does
    # not allow code extensions, ignoring: {', '.join(encodings[1:])}",
    # "Value '{encoding}' cannot be used as code extension, ignoring it"
    (
        r"Value '.*'( for Specific Character Set does not allow code extensions, ignoring: ).*",
        rf"Value {VALUE_WITHHELD}\1{VALUE_WITHHELD}",
    ),
    (r"Value '.*'( cannot be used as code extension, ignoring it)", rf"Value {VALUE_WITHHELD}\1"),
    # datadict.private_dictionary_VR, reading a private element:
    # "{tag.private_creator} '{private_creator}' is not a valid private creator"
    (r"(\([0-9A-Fa-f]{4},[0-9A-Fa-f]{4}\) )'.*'( is not a valid private creator)", rf"\1{VALUE_WITHHELD}\2"),
    # filereader.read_dataset, a file cut short: str(EOFError) + " in file " + fp.name
    (r"( in file ).*", rf"\1{FILE_WITHHELD}"),
    # filereader.dcmread, at DEBUG: "Reading file '{fp}'"
    (r"(Reading file ).*", rf"\1{FILE_WITHHELD}"),
)
_QUOTING_PATTERNS = [(re.compile(pattern, re.DOTALL), replacement) for pattern, replacement in _QUOTING_MESSAGES]


def withhold_dicom_values(text: str) -> str:
    """``text`` (a message of pydicom, or a warning as Python formats it) without the values
    and the file path that pydicom quotes in it."""
    for pattern, replacement in _QUOTING_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class WithholdDicomValues(logging.Filter):
    """Logging filter (settings.LOGGING, on the loggers ``pydicom`` and ``py.warnings``, where
    Python's warnings are logged): the record's message passes :func:`withhold_dicom_values`.
    On the logger rather than a handler, so that every handler gets the record without them."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        withheld = withhold_dicom_values(message)
        if withheld != message:
            record.msg, record.args = withheld, None
        return True


def withhold_exception_at_creation(record: logging.LogRecord) -> logging.LogRecord:
    """Replace a record's exception by :func:`traceback_without_messages` (as ``exc_text``)."""
    if record.exc_info and record.exc_info[1] is not None:
        record.exc_text = traceback_without_messages(record.exc_info[1])
        record.exc_info = None
    return record


def _install_record_factory() -> None:
    """Every log record is made without its exception's message, before any handler sees
    it: handlers that a library adds later (Django's console handler, Celery's, an error
    reporter's) get the same redacted record as ours. Installed once per process."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "withholds_exception_messages", False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        return withhold_exception_at_creation(previous(*args, **kwargs))

    factory.withholds_exception_messages = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def configure_logging(config: dict) -> None:
    """settings.LOGGING_CONFIG, for every process (web server, Celery worker, manage.py):
    ``config`` applied, every record made without its exception's message
    (:func:`_install_record_factory`), then Python's warnings logged to ``py.warnings``
    instead of printed to stderr as they are, so that pydicom's warnings pass
    :class:`WithholdDicomValues` (the Celery worker logs them so too)."""
    logging.config.dictConfig(config)
    _install_record_factory()
    logging.captureWarnings(True)
