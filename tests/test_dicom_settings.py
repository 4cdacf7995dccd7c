"""The DICOM node's settings: defaults, and bad values that stop start-up (docs/dicom-networking.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.test_settings import REPO, load_settings

PROBE_KEYS = (
    "DICOM_NODE_AE_TITLE",
    "DICOM_NODE_HOST",
    "DICOM_NODE_PORT",
    "DICOM_NODE_CHECK_PEER_HOST",
    "DICOM_NODE_SERIES_QUIET_S",
    "DICOM_SEND_ATTEMPTS",
    "DICOM_SEND_RETRY_DELAY_S",
    "DICOM_SEND_MAX_DELAY_S",
    "DICOM_NETWORK_TIMEOUT_S",
)


def dicom_settings(**env: str) -> dict:
    probe = "import json; from django.conf import settings; print(json.dumps({k: getattr(settings, k) for k in %r}))"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_")}
    clean.update(env, DJANGO_SETTINGS_MODULE="webapp.settings")
    result = subprocess.run(
        [sys.executable, "-c", probe % (PROBE_KEYS,)], cwd=REPO, env=clean, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_defaults():
    assert dicom_settings() == {
        "DICOM_NODE_AE_TITLE": "DELINEO",
        "DICOM_NODE_HOST": "127.0.0.1",
        "DICOM_NODE_PORT": 11112,
        "DICOM_NODE_CHECK_PEER_HOST": True,
        "DICOM_NODE_SERIES_QUIET_S": 10,
        "DICOM_SEND_ATTEMPTS": 5,
        "DICOM_SEND_RETRY_DELAY_S": 30,
        "DICOM_SEND_MAX_DELAY_S": 600,
        "DICOM_NETWORK_TIMEOUT_S": 30,
    }
    assert dicom_settings(DICOM_NODE_AE_TITLE="RT_NODE", DICOM_NODE_PORT="104")["DICOM_NODE_PORT"] == 104


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DICOM_NODE_AE_TITLE": "A_NAME_LONGER_THAN_16"}, "is not a DICOM AE title"),
        ({"DICOM_NODE_AE_TITLE": "BACK\\SLASH"}, "is not a DICOM AE title"),
        ({"DICOM_NODE_PORT": "70000"}, "DICOM_NODE_PORT=70000 is not a TCP port"),
        ({"DICOM_NODE_PORT": "eleven"}, "DICOM_NODE_PORT='eleven' is not an integer"),
        ({"DICOM_NODE_SERIES_QUIET_S": "-1"}, "DICOM_NODE_SERIES_QUIET_S=-1 is below the minimum"),
        ({"DICOM_NODE_CHECK_PEER_HOST": "perhaps"}, "is not a boolean"),
        ({"DICOM_NODE_TLS_CERT": "/etc/delineo/node.pem"}, "DICOM_NODE_TLS_CERT and DICOM_NODE_TLS_KEY go together"),
    ],
)
def test_bad_values_fail_loudly(env, message):
    result = load_settings(**env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and message in result.stderr, result.stderr
