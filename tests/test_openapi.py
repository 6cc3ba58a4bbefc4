"""docs/openapi.json describes the app as it is: every route, every method, nothing else."""

from __future__ import annotations

import json
import re

import schemathesis
import tornado.web
from tornado.routing import PathMatches

from handlers.base import STATUS_CODES
from handlers.openapi import OPENAPI_PATH
from handlers.dashboard_api import DashboardApiNotFoundHandler
from handlers.dashboard_pages import PageNotFoundHandler
from handlers.widget_api import ApiNotFoundHandler
from server.app import make_app

DOCUMENT = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
HTTP_METHODS = ("get", "post", "put", "patch", "delete")


def routes(services) -> list[tuple[re.Pattern[str], type]]:
    app = make_app(services)
    found = []
    for rule in app.wildcard_router.rules:
        assert isinstance(rule.matcher, PathMatches)
        found.append((rule.matcher.regex, rule.target))
    return found


def handler_for(path: str, table: list[tuple[re.Pattern[str], type]]) -> type | None:
    """The handler Tornado picks for `path`: the first route that matches it whole."""
    return next((target for regex, target in table if regex.fullmatch(path)), None)


def sample(path: str) -> str:
    """The path with each parameter replaced by its documented example."""
    examples = {p["name"]: p["example"] for op in DOCUMENT["paths"][path].values()
                for p in op.get("parameters", ()) if p.get("in") == "path"}
    return re.sub(r"\{([^}]+)\}", lambda m: examples[m.group(1)], path)


def implemented(handler: type) -> set[str]:
    return {m for m in HTTP_METHODS
            if getattr(handler, m) is not getattr(tornado.web.RequestHandler, m)}


def test_the_document_is_valid_openapi_3_1():
    assert DOCUMENT["openapi"].startswith("3.1.")
    schema = schemathesis.openapi.from_dict(DOCUMENT)
    schema.validate()  # against the OpenAPI 3.1 meta-schema
    operations = [result.ok() for result in schema.get_all_operations()]  # every $ref resolves
    assert len(operations) == sum(len(ops) for ops in DOCUMENT["paths"].values())


async def test_the_api_serves_its_document(parley):
    response = await parley.client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == DOCUMENT


async def test_every_documented_operation_has_a_handler(parley):
    table = routes(parley.services)
    for path, operations in DOCUMENT["paths"].items():
        handler = handler_for(sample(path), table)
        assert handler is not None and handler is not ApiNotFoundHandler, f"{path} has no route"
        documented = {m for m in operations if m in HTTP_METHODS}
        assert documented == implemented(handler), f"{path}: documented {documented}"


async def test_every_route_is_documented(parley):
    documented = [(path, handler_for(sample(path), routes(parley.services)))
                  for path in DOCUMENT["paths"]]
    for regex, handler in routes(parley.services):
        if handler in (ApiNotFoundHandler, DashboardApiNotFoundHandler, PageNotFoundHandler):
            continue  # the 404s for every other path under /api/ and /dashboard/
        assert any(target is handler and regex.fullmatch(sample(path)) for path, target in documented), \
            f"route {regex.pattern} ({handler.__name__}) is not in docs/openapi.json: describe it there"


def test_every_error_code_the_server_raises_is_documented():
    import server.errors as errors

    codes = set(DOCUMENT["components"]["schemas"]["Error"]["properties"]["code"]["enum"])
    raised = {cls.code for cls in vars(errors).values()
              if isinstance(cls, type) and issubclass(cls, errors.ParleyError)}
    raised |= set(STATUS_CODES.values()) | {"internal"}
    assert raised <= codes, raised - codes
