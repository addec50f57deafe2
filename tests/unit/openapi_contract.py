"""Contract checks of recorded HTTP exchanges against a vendor's OpenAPI document (openapi-core), for any server.

An exchange is what a client's ``request_hook`` records: ``{method, path, query, headers, json_body, status,
response}`` (``json_body``: the JSON body sent, a list for an NDJSON body; ``response``: the parsed JSON answer, a
text, or None for a streamed download). ``Contract(doc).validate_exchange(base_url, exchange)`` checks that the
method and path match an operation of the document, that the request (path and query parameters, body) is valid for
it and that the response body validates against the operation's schema for that status. A status the operation does
not declare (vendors document the success answer only) is checked against ``error_schema`` when the body is an error
document (``error_key`` in it), otherwise against the operation's success schema (Elasticsearch answers a missing
document or a timed-out health wait with the success shape and 404 / 408).

Used by tests/unit/test_search_standin.py (Elasticsearch 8.15); tests/unit/qdrant_fixtures.py has the same logic
bound to Qdrant's document.
"""

from __future__ import annotations

import json
import re
from functools import cached_property
from pathlib import Path

DOC_URI = "https://contract.invalid/openapi.json"


class Contract:
    def __init__(self, doc_path: Path | str, *, validate_spec: bool = True, error_schema: str | None = None,
                 error_key: str = "error", raw_bodies: dict | None = None, union_as_any_of: bool = False):
        """``validate_spec=False`` for a document openapi-spec-validator rejects for reasons outside the parts used
        (Elasticsearch's has duplicate enum values in its ML _cat parameters). ``error_schema`` names a schema of
        ``components/schemas``. ``raw_bodies``: ``{path suffix: (bytes, content type)}`` sent instead of the recorded
        body (a streamed upload the hook cannot see).

        ``union_as_any_of``: the document writes its unions as ``oneOf`` whose branches overlap (``long`` and
        ``double`` both ``type: number``; ``string`` and nullable ``string``) and adds ``discriminator`` objects
        without a ``mapping`` whose implicit mapping (the schema's name) names no schema (Elasticsearch's generator
        does both): read each ``oneOf`` as ``anyOf`` (a value must match at least one branch) and drop those
        discriminators. ``fixes`` counts what was rewritten."""
        self.doc_path = Path(doc_path)
        self.validate_spec = validate_spec
        self.error_schema = error_schema
        self.error_key = error_key
        self.raw_bodies = raw_bodies or {}
        self.union_as_any_of = union_as_any_of
        self.fixes = {"oneOf": 0, "discriminator": 0}

    def _normalize(self, node):
        if isinstance(node, dict):
            if "discriminator" in node and not (node["discriminator"] or {}).get("mapping"):
                del node["discriminator"]
                self.fixes["discriminator"] += 1
            if "oneOf" in node:
                node["anyOf"] = node.pop("oneOf")
                self.fixes["oneOf"] += 1
            for value in node.values():
                self._normalize(value)
        elif isinstance(node, list):
            for value in node:
                self._normalize(value)

    @cached_property
    def doc(self) -> dict:
        doc = json.loads(self.doc_path.read_text())
        if self.union_as_any_of:
            self._normalize(doc)
        return doc

    @cached_property
    def spec(self):
        from openapi_core import Config, OpenAPI

        config = Config() if self.validate_spec else Config(spec_validator_cls=None)
        return OpenAPI.from_dict(self.doc, config=config)

    @cached_property
    def _templates(self) -> list:
        out = []
        for template, ops in self.doc["paths"].items():
            regex = re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$")
            out.append((template, regex, template.count("{"), frozenset(m.upper() for m in ops)))
        return out

    def path_template(self, method: str, path: str) -> str:
        """The OpenAPI path template a concrete path matches (literal segments win, like openapi-core)."""
        matches = [(n, t) for t, rx, n, methods in self._templates if rx.match(path) and method.upper() in methods]
        if not matches:
            raise AssertionError(f"{method} {path} matches no operation of the OpenAPI document")
        return min(matches)[1]

    def operation(self, method: str, path: str) -> dict:
        return self.doc["paths"][self.path_template(method, path)][method.lower()]

    def _resolve(self, obj):
        while isinstance(obj, dict) and "$ref" in obj:
            node = self.doc
            for part in obj["$ref"].lstrip("#/").split("/"):
                node = node[part.replace("~1", "/").replace("~0", "~")]
            obj = node
        return obj

    def declared_statuses(self, method: str, path: str) -> set:
        return set(self.operation(method, path).get("responses") or {})

    @cached_property
    def _registry(self):
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT4

        return Registry().with_resource(DOC_URI, Resource.from_contents(self.doc, default_specification=DRAFT4))

    def validate_schema(self, instance, schema_name: str) -> None:
        """Validate ``instance`` against ``components/schemas/<schema_name>`` (OpenAPI 3.0 dialect, $refs resolved)."""
        from openapi_schema_validator import OAS30Validator

        ref = {"$ref": DOC_URI + "#/components/schemas/" + schema_name}
        OAS30Validator(ref, registry=self._registry).validate(instance)

    def build_request(self, base_url: str, ex: dict):
        from openapi_core.testing import MockRequest

        headers = {k: v for k, v in ex["headers"].items() if k.lower() not in ("content-length", "content-type")}
        raw = next((v for suffix, v in self.raw_bodies.items() if ex["path"].endswith(suffix)), None)
        if raw is not None:
            data, ctype = raw
        elif ex["json_body"] is not None:
            data, ctype = json.dumps(ex["json_body"]).encode(), "application/json"
        else:
            data, ctype = None, "application/json"
        return MockRequest(base_url, ex["method"].lower(), ex["path"], args=ex["query"] or None, headers=headers,
                           data=data, content_type=ctype)

    @staticmethod
    def build_response(ex: dict, status: int):
        from openapi_core.testing import MockResponse

        body = ex["response"]
        if body is None:  # streamed download
            return MockResponse(b"\x00bytes", status_code=status, content_type="application/octet-stream")
        if isinstance(body, str):
            return MockResponse(body.encode(), status_code=status, content_type="text/plain")
        return MockResponse(json.dumps(body).encode(), status_code=status, content_type="application/json")

    def validate_exchange(self, base_url: str, ex: dict) -> tuple[str, str]:
        """Validate request and response of one exchange; returns (METHOD, path template)."""
        request = self.build_request(base_url, ex)
        self.spec.validate_request(request)
        declared = self.declared_statuses(ex["method"], ex["path"])
        status = ex["status"]
        if str(status) in declared or "default" in declared:
            self.spec.validate_response(request, self.build_response(ex, status))
        elif isinstance(ex["response"], dict) and self.error_key in ex["response"] and self.error_schema:
            self.validate_schema(ex["response"], self.error_schema)
        else:
            success = sorted(s for s in declared if s.startswith("2"))
            if not success:
                raise AssertionError(f"{ex['method']} {ex['path']}: status {status} is not declared")
            self.spec.validate_response(request, self.build_response(ex, int(success[0])))
        return ex["method"].upper(), self.path_template(ex["method"], ex["path"])
