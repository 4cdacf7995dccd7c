"""drf-spectacular hooks."""

from __future__ import annotations

import re


def strip_download_slash(result: dict, generator, request, public) -> dict:
    """Document file downloads without the optional trailing slash: ``.../labels.nii.gz``."""
    paths = result["paths"].items()
    result["paths"] = {re.sub(r"(\.(?:gz|dcm|zip|json))/$", r"\1", path): item for path, item in paths}
    return result
