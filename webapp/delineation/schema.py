"""drf-spectacular hooks."""

from __future__ import annotations

import re


def strip_download_slash(result: dict, generator, request, public) -> dict:
    """Document file downloads without the optional trailing slash: ``.../labels.nii.gz``."""
    paths = result["paths"].items()
    result["paths"] = {re.sub(r"(\.(?:gz|dcm|zip|json))/$", r"\1", path): item for path, item in paths}
    return result


# The refusals DRF answers on its own, before or instead of a view's documented responses.
_ERRORS = {
    "400": "The request is not valid: a message per field, or 'detail'.",
    "401": "Not logged in: no session and no valid token.",
    "404": "No such object among yours (another user's object is not found either).",
    "415": "The request body's content type is not one this operation reads.",
    "429": "Too many sign-in attempts: wait the minutes the message says.",
}


def document_error_responses(result: dict, generator, request, public) -> dict:
    """Add to each operation the error responses the API can give but drf-spectacular does
    not list: 400 where there is input to validate, 401 where login is needed, 404 on an
    object's URL, 415 where there is a body, 429 on sign-in. A response the view documents is kept."""
    error = {"application/json": {"schema": {"type": "object", "additionalProperties": {}}}}
    for path, item in result["paths"].items():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            parameters = operation.get("parameters", [])
            wanted = {
                "400": "requestBody" in operation or any(p.get("in") == "query" for p in parameters),
                "401": bool(operation.get("security")) and path != "/api/auth/token/",
                "404": "{" in path,
                "415": "requestBody" in operation,
                "429": path == "/api/auth/token/",  # the sign-in throttles (throttling.py)
            }
            for code, needed in wanted.items():
                if needed and code not in operation["responses"]:
                    operation["responses"][code] = {"description": _ERRORS[code], "content": error}
    return result
