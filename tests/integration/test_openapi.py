"""The OpenAPI description (`webhook.openapi`): every registered /api route is in it with its
method, path parameters, answers and bearer security; it loads in schemathesis (which refuses a
malformed one); `/api/openapi.json` and `/api/docs` need no token, and nothing else under /api
became public."""

from __future__ import annotations

import re

import schemathesis
from flask import Flask
from flask.testing import FlaskClient

from webhook import openapi


def _described(client: FlaskClient) -> dict:
    response = client.get("/api/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    return response.get_json()


def test_every_registered_api_route_is_described(app: Flask, client: FlaskClient) -> None:
    described = _described(client)
    assert described["openapi"] == "3.1.0"
    served = {(method.lower(), re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule))
              for method, rule, _ in openapi.api_rules(app)}
    listed = {(method, path) for path, methods in described["paths"].items() for method in methods}
    assert len(served) >= 34
    assert served - listed == set(), "routes missing from the description (add them to openapi.OPERATIONS)"
    assert listed - served == set()
    assert set(openapi.OPERATIONS) == {endpoint for *_, endpoint in openapi.api_rules(app)}, "stale entries"


def test_each_operation_has_its_parameters_answers_and_security(client: FlaskClient) -> None:
    described = _described(client)
    assert described["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "a client's token (`payments clients add`)"}
    assert described["security"] == [{"bearer": []}]
    for path, methods in described["paths"].items():
        for method, op in methods.items():
            in_path = {p["name"] for p in op["parameters"] if p["in"] == "path"}
            assert in_path == set(re.findall(r"{([^}]+)}", path)), (method, path)
            assert {"200", "400", "401", "403", "404", "409", "413", "422", "429", "503"} <= set(op["responses"])
            if method in ("post", "put") and not path.endswith("/setup"):
                assert "requestBody" in op, (method, path)
    payment = described["paths"]["/api/payments"]["post"]
    assert set(payment["responses"]) >= {"200", "202"}
    amount = described["components"]["schemas"]["PaymentIn"]["properties"]["amount"]
    assert {branch["type"] for branch in amount["anyOf"]} == {"string", "integer"}, "money is never a number"
    assert "ReadThisRequest" in payment["responses"]["202"]["links"]


def test_the_description_loads_in_schemathesis(client: FlaskClient) -> None:
    schema = schemathesis.openapi.from_dict(_described(client))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 34


def test_the_description_and_docs_need_no_token_and_nothing_else_is_public(app_with) -> None:
    client = app_with().test_client()
    assert client.get("/api/openapi.json").status_code == 200
    docs = client.get("/api/docs")
    assert docs.status_code == 200 and docs.mimetype == "text/html"
    assert "default-src 'none'" in docs.headers["Content-Security-Policy"]
    page = docs.get_data(as_text=True)
    assert "<script" not in page and "src=" not in page and "http" not in page.replace("/api/openapi.json", "")
    for path in _described(client)["paths"]:
        assert f"POST {path}" in page or f"GET {path}" in page or f"PUT {path}" in page or f"DELETE {path}" in page
    assert client.get("/api/admin/summary").status_code == 401
    assert client.get("/api/members/ann").status_code == 401
    assert client.post("/api/openapi.json").status_code == 405
