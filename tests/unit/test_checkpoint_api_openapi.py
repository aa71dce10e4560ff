"""The checkpoint API's OpenAPI description in the repository is exactly what its routes generate."""

from __future__ import annotations

import json
from pathlib import Path

from checkpoint_api.app import app
from checkpoint_api.openapi import DOCUMENT, render

EVENTS = Path(__file__).parents[2] / "events"


def test_the_committed_description_is_the_one_the_routes_generate():
    assert DOCUMENT.read_text() == render(), (
        "functions/checkpoint_api/openapi.json is out of date: PYTHONPATH=functions .venv/bin/python -m "
        "checkpoint_api.openapi"
    )


def test_it_describes_every_route_of_the_resolver_and_nothing_else():
    document = json.loads(DOCUMENT.read_text())
    described = {(method.upper(), path) for path, operations in document["paths"].items() for method in operations}
    registered = app._static_routes + app._dynamic_routes
    routes = {(route.method, route.openapi_path) for route in registered if route.include_in_schema}
    assert described == routes
    assert described == {
        ("GET", "/projects/{project_id}/jobs/{job_id}/checkpoints"),
        ("GET", "/projects/{project_id}/jobs/{job_id}/checkpoints/{name}"),
        ("GET", "/test-jobs/{job_id}/checkpoints"),
        ("GET", "/test-jobs/{job_id}/checkpoints/{name}"),
    }


def test_it_documents_the_bounds_the_routes_enforce():
    document = json.loads(DOCUMENT.read_text())
    operation = document["paths"]["/projects/{project_id}/jobs/{job_id}/checkpoints/{name}"]["get"]
    parameters = {parameter["name"]: parameter for parameter in operation["parameters"]}
    assert (parameters["job_id"]["schema"]["minimum"], parameters["job_id"]["schema"]["maximum"]) == (1, 2**31 - 1)
    assert parameters["name"]["schema"]["enum"] == ["best", "last"]
    expires = parameters["expires_in"]
    assert (expires["required"], expires["schema"]["default"]) == (False, 900)
    assert (expires["schema"]["minimum"], expires["schema"]["maximum"]) == (60, 3600)
    assert set(operation["responses"]) == {"200", "404", "409", "422", "500", "503"}
    assert operation["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    assert document["security"] == [{"sigv4": []}, {"jwt": []}]


def test_each_api_event_names_a_described_route():
    document = json.loads(DOCUMENT.read_text())
    for event_file in EVENTS.glob("api-*.json"):
        event = json.loads(event_file.read_text())
        method, path = event["routeKey"].split(" ", 1)
        assert path in document["paths"] and method.lower() in document["paths"][path], event_file.name
        assert event["version"] == "2.0"
