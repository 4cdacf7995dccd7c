"""The engine's readers on every input of the malformed corpus (``tests/malformed_corpus.py``):
they raise the engine's own documented errors, with a message, never what a parser raised
inside them (IndexError, struct.error, zlib.error, MemoryError, ...)."""

from __future__ import annotations

import pytest

from engine.errors import InputError
from engine.infer.audit import AuditError, audit_file
from engine.io.preflight import inspect_input
from engine.io.reader import read_input
from engine.io.rtstruct_import import RTStructImportError
from tests.malformed_corpus import AUDIT_FAILS, JOB_FAILS, REFUSED, corpus

CORPUS = corpus()


def entries(*outcomes: str) -> list:
    return [pytest.param(e, id=e.id) for e in CORPUS if e.outcome in outcomes]


@pytest.mark.parametrize("entry", entries(REFUSED, JOB_FAILS))
def test_read_input_raises_input_error(tmp_path, entry):
    path = entry.write(tmp_path)
    with pytest.raises(InputError) as raised:
        read_input(path)
    assert str(raised.value).strip()


@pytest.mark.parametrize("entry", entries(REFUSED))
def test_the_preflight_report_refuses_it(tmp_path, entry):
    """``inspect_input`` raises InputError or reports every series refused, with a reason."""
    path = entry.write(tmp_path)
    try:
        report = inspect_input(path)
    except InputError as exc:
        assert str(exc).strip()
        return
    assert report["series"] and all(s["status"] == "refused" and s["reason"] for s in report["series"]), report


@pytest.mark.parametrize("entry", entries(JOB_FAILS, AUDIT_FAILS))
def test_the_preflight_report_of_a_sound_header_accepts_it(tmp_path, entry):
    """Only decoding the pixels (JOB_FAILS) or the contours (AUDIT_FAILS) finds the damage."""
    report = inspect_input(entry.write(tmp_path))
    assert [s["status"] for s in report["series"]] == ["ok"]


@pytest.mark.parametrize("entry", entries(AUDIT_FAILS))
def test_contours_outside_the_image_fail_the_audit_before_the_network(tmp_path, entry, monkeypatch):
    import engine.infer.audit as audit

    def no_network(*args, **kwargs):
        raise AssertionError("the network ran")

    monkeypatch.setattr(audit, "structure_probabilities", no_network)
    with pytest.raises((AuditError, RTStructImportError)) as raised:
        audit_file(entry.write(tmp_path), "hn-rt", tmp_path / "out")
    assert str(raised.value).strip()
