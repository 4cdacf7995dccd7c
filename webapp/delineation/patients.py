"""Grouping a user's scans by patient (``models.Patient``).

A scan's patient comes from the DICOM Patient ID (0010,0020) of its upload, or from a
Patient ID the user enters (a NIfTI file carries none; an entered one overrides the
DICOM one). Patient IDs identify people: they are shown to their owner only and never
logged.
"""

from __future__ import annotations

from django.contrib.auth.base_user import AbstractBaseUser

from webapp.delineation.models import Patient

MAX_LENGTH = 64  # DICOM LO (PS3.5 6.2)


class PatientIdError(ValueError):
    """An entered Patient ID that cannot be used; the message is meant for the user."""


def clean_patient_id(raw: str | None) -> str:
    """The Patient ID with surrounding spaces removed; "" for none.

    Raises:
        PatientIdError: longer than 64 characters, or holding a backslash or a control
            character (not allowed in a DICOM LO value, PS3.5 6.2).
    """
    value = (raw or "").strip()
    if len(value) > MAX_LENGTH:
        raise PatientIdError(f"A Patient ID has at most {MAX_LENGTH} characters (DICOM); this one has {len(value)}.")
    if "\\" in value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise PatientIdError("A Patient ID cannot hold a backslash or a control character (DICOM).")
    return value


def patient_for(owner: AbstractBaseUser, patient_id: str, label: str = "") -> Patient | None:
    """The owner's patient with ``patient_id`` (cleaned), created if new; a non-empty
    ``label`` becomes its display label. None for an empty ``patient_id``."""
    if not patient_id:
        return None
    patient, _ = Patient.objects.get_or_create(owner=owner, patient_id=patient_id)
    label = label.strip()[:255]
    if label and label != patient.label:
        patient.label = label
        patient.save(update_fields=["label"])
    return patient
