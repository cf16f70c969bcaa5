"""The routing table (OpenAPI, x-function) is the contract between the functions and the ingress."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from werkzeug.test import EnvironBuilder

from common import routing
from tests.support import function_names, load_routes


@pytest.mark.parametrize("function", function_names())
def test_each_function_handles_exactly_its_slice_of_the_table(function: str) -> None:
    routes = load_routes(function)
    expected = {r.operation_id for r in routing.routes() if r.function == function or r.probe}
    assert set(routes.handlers) == expected


def test_the_table_and_the_function_folders_name_the_same_functions() -> None:
    assert set(routing.functions()) == set(function_names())


def test_a_function_may_be_named_in_x_functions_alone_and_has_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    document = routing.openapi_document()
    assert routing.function_settings("upload") == routing.FunctionSettings("upload", 2, 8)
    assert routing.function_settings("health") == routing.FunctionSettings("health", 1, 4)
    routing.routes()  # cached from the real document
    monkeypatch.setattr(
        routing, "openapi_document", lambda: {**document, "x-functions": {"events": {"rehearsal": {}}}}
    )
    assert "events" in routing.functions() and "upload" in routing.functions()
    assert routing.function_settings("events") == routing.FunctionSettings("events", 1, 4)


def test_every_operation_names_a_function_and_ids_are_unique() -> None:
    ids = [r.operation_id for r in routing.routes()]
    assert len(ids) == len(set(ids))
    assert all(r.function for r in routing.routes())


@pytest.mark.parametrize(
    ("method", "path", "function"),
    [
        ("POST", "/media", "upload"),
        ("GET", "/media", "download"),
        ("HEAD", "/media", "download"),
        ("GET", "/media/0b5c7d1e-0000-4000-8000-000000000000", "download"),
        ("DELETE", "/media/0b5c7d1e-0000-4000-8000-000000000000", "upload"),
        ("GET", "/media/0b5c7d1e-0000-4000-8000-000000000000/content", "download"),
        ("HEAD", "/media/0b5c7d1e-0000-4000-8000-000000000000/content", "download"),
        ("GET", "/health/live", "health"),
        ("GET", "/health/ready", "health"),
    ],
)
def test_the_ingress_map_dispatches_like_the_issue_says(method: str, path: str, function: str) -> None:
    env = EnvironBuilder(method=method, path=path).get_environ()
    assert routing.ingress_map().bind_to_environ(env).match()[0] == function


def test_rules_translate_openapi_templates() -> None:
    route = next(r for r in routing.routes() if r.operation_id == "getMediaContent")
    assert route.rule == "/media/<uuid_text:id>/content"  # `format: uuid`
    put = next(r for r in routing.routes() if r.operation_id == "completeUpload")
    assert put.rule == "/media/uploads/<token>"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/media/uploads", 405),  # not a record whose id is "uploads"
        ("OPTIONS", "/media/null,null", 404),  # not an id
        ("GET", "/media/not-a-uuid/content", 404),
    ],
)
def test_an_id_that_is_not_a_uuid_matches_no_record_route(method: str, path: str, status: int) -> None:
    from werkzeug.exceptions import MethodNotAllowed, NotFound

    env = EnvironBuilder(method=method, path=path).get_environ()
    expected = MethodNotAllowed if status == 405 else NotFound
    with pytest.raises(expected):
        routing.ingress_map().bind_to_environ(env).match()


def test_the_openapi_document_is_valid_openapi_3_1() -> None:
    from openapi_spec_validator import validate

    validate(routing.openapi_document())  # raises with the offending path when it is not
    assert routing.openapi_document()["openapi"].startswith("3.1")


def test_the_routing_table_reads_the_same_with_libyaml_as_with_pure_python() -> None:
    """openapi_document uses libyaml's safe loader when PyYAML has it (a cold start's 50 ms)."""
    text = (Path(routing.__file__).parent / "openapi.yaml").read_text(encoding="utf-8")
    assert routing.openapi_document() == yaml.safe_load(text)
    assert hasattr(yaml, "CSafeLoader")  # the wheels are built with libyaml: the fast path is taken
