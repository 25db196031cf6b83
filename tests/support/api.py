"""The API's own description, as tests check answers against it."""

from __future__ import annotations

import jsonschema


def openapi_check(spec: dict, template: str, method: str, response) -> None:
    """Validate ``response`` against what ``spec`` says ``method template`` answers with its status."""
    responses = spec["paths"][template][method]["responses"]
    status = str(response.status_code)
    assert status in responses, f"{method.upper()} {template} answered {status}, which the description omits"
    schema = responses[status]["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator({**schema, "components": spec["components"]}).validate(response.json())
