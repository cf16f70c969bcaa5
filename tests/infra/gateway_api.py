"""Field-by-field checks of HTTPRoute (gateway.networking.k8s.io/v1) and ReferenceGrant (v1beta1)
against what the Gateway API specification requires (its API reference and CRD validation rules,
v1.2): no typed models of these kinds exist on PyPI, so the rules the generated objects touch are
written out here. Unknown fields are errors, as `kubectl apply --validate=strict` would make them.

Each check returns the list of problems, as "path: what is wrong"; an empty list is a pass.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

# RFC 1123 DNS names (a Hostname may start with a `*.` wildcard label; a PreciseHostname may not).
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
PRECISE_HOSTNAME = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
HOSTNAME = re.compile(rf"^(\*\.)?{_DNS_LABEL}(\.{_DNS_LABEL})*$")
OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
GROUP = re.compile(r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
KIND = re.compile(r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")
DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")  # GEP-2257
METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
PATH_TYPES = {"Exact", "PathPrefix", "RegularExpression"}
FILTER_FIELDS = {  # a filter's type and the field that must come with it
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestMirror": "requestMirror",
    "RequestRedirect": "requestRedirect",
    "URLRewrite": "urlRewrite",
    "ExtensionRef": "extensionRef",
}


class _Check:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def fields(self, obj: Any, path: str, allowed: set[str], required: Collection[str] = ()) -> bool:
        if not isinstance(obj, dict):
            self.fail(path, f"must be an object, not {type(obj).__name__}")
            return False
        for key in sorted(set(obj) - allowed):
            self.fail(f"{path}.{key}", "unknown field")
        for key in sorted(set(required) - set(obj)):
            self.fail(f"{path}.{key}", "required")
        return True

    def string(
        self, value: Any, path: str, pattern: re.Pattern[str] | None = None, max_length: int = 253
    ) -> None:
        if not isinstance(value, str):
            self.fail(path, "must be a string")
        elif len(value) > max_length:
            self.fail(path, f"longer than {max_length}")
        elif pattern is not None and not pattern.match(value):
            self.fail(path, f"{value!r} does not match {pattern.pattern}")

    def items(self, value: Any, path: str, min_items: int, max_items: int) -> list[Any]:
        if not isinstance(value, list):
            self.fail(path, "must be a list")
            return []
        if not min_items <= len(value) <= max_items:
            self.fail(path, f"must have {min_items} to {max_items} items, has {len(value)}")
        return value


def _metadata(c: _Check, doc: dict[str, Any]) -> None:
    meta = doc.get("metadata", {})
    if c.fields(meta, "metadata", {"name", "namespace", "labels", "annotations"}, {"name", "namespace"}):
        c.string(meta.get("name"), "metadata.name", OBJECT_NAME)
        c.string(meta.get("namespace"), "metadata.namespace", OBJECT_NAME, 63)


def _parent_ref(c: _Check, ref: Any, path: str) -> None:
    if not c.fields(ref, path, {"group", "kind", "namespace", "name", "sectionName", "port"}, {"name"}):
        return
    c.string(ref.get("group", "gateway.networking.k8s.io"), f"{path}.group", GROUP)
    c.string(ref.get("kind", "Gateway"), f"{path}.kind", KIND, 63)
    c.string(ref["name"], f"{path}.name", OBJECT_NAME)
    if "namespace" in ref:
        c.string(ref["namespace"], f"{path}.namespace", OBJECT_NAME, 63)


def _path_match(c: _Check, match: Any, path: str) -> None:
    if not c.fields(match, path, {"type", "value"}):
        return
    kind, value = match.get("type", "PathPrefix"), match.get("value", "/")
    if kind not in PATH_TYPES:
        c.fail(f"{path}.type", f"{kind!r} is not one of {sorted(PATH_TYPES)}")
    c.string(value, f"{path}.value", max_length=1024)
    if kind in ("Exact", "PathPrefix") and isinstance(value, str):
        # The CRD's CEL rules: an absolute path, no `//`, no `/./` or `/../`, no `%2f`, no `#`.
        if not value.startswith("/"):
            c.fail(f"{path}.value", "must be an absolute path")
        if "//" in value or "/./" in value or "/../" in value or "#" in value or "%2f" in value.lower():
            c.fail(f"{path}.value", "must not contain //, /./, /../, %2f or #")
    if kind == "RegularExpression" and isinstance(value, str):
        try:
            re.compile(value)
        except re.error as exc:
            c.fail(f"{path}.value", f"not a regular expression: {exc}")


def _route_match(c: _Check, match: Any, path: str) -> None:
    if not c.fields(match, path, {"path", "headers", "queryParams", "method"}):
        return
    if "path" in match:
        _path_match(c, match["path"], f"{path}.path")
    if "method" in match and match["method"] not in METHODS:
        c.fail(f"{path}.method", f"{match['method']!r} is not an HTTP method the API knows")


def _filter(c: _Check, flt: Any, path: str) -> None:
    if not c.fields(flt, path, {"type", *FILTER_FIELDS.values()}, {"type"}):
        return
    kind = flt["type"]
    if kind not in FILTER_FIELDS:
        c.fail(f"{path}.type", f"{kind!r} is not a filter type")
        return
    field = FILTER_FIELDS[kind]
    if field not in flt:
        c.fail(f"{path}.{field}", f"required with type {kind}")
    for other in set(flt) - {"type", field}:
        c.fail(f"{path}.{other}", f"not allowed with type {kind}")
    rewrite = flt.get(field) if kind == "URLRewrite" else None
    if (
        rewrite is not None
        and c.fields(rewrite, f"{path}.{field}", {"hostname", "path"})
        and "hostname" in rewrite
    ):
        c.string(rewrite["hostname"], f"{path}.{field}.hostname", PRECISE_HOSTNAME)


def _backend_ref(c: _Check, ref: Any, path: str) -> None:
    if not c.fields(ref, path, {"group", "kind", "name", "namespace", "port", "weight", "filters"}, {"name"}):
        return
    group, kind = ref.get("group", ""), ref.get("kind", "Service")
    c.string(group, f"{path}.group", GROUP)
    c.string(kind, f"{path}.kind", KIND, 63)
    c.string(ref["name"], f"{path}.name", OBJECT_NAME)
    if "namespace" in ref:
        c.string(ref["namespace"], f"{path}.namespace", OBJECT_NAME, 63)
    port = ref.get("port")
    if group == "" and kind == "Service" and port is None:
        c.fail(f"{path}.port", "required when the backend is a Service")
    if port is not None and not (isinstance(port, int) and 1 <= port <= 65535):
        c.fail(f"{path}.port", f"{port!r} is not a port number")


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"([0-9]+)(ms|h|m|s)", duration))


def _timeouts(c: _Check, timeouts: Any, path: str) -> None:
    if not c.fields(timeouts, path, {"request", "backendRequest"}):
        return
    for key in ("request", "backendRequest"):
        if key in timeouts:
            c.string(timeouts[key], f"{path}.{key}", DURATION)
    request, backend = timeouts.get("request"), timeouts.get("backendRequest")
    if (
        isinstance(request, str)
        and isinstance(backend, str)
        and _seconds(request)
        and _seconds(backend) > _seconds(request)
    ):
        c.fail(f"{path}.backendRequest", "must not be longer than request")


def check_http_route(doc: dict[str, Any]) -> list[str]:
    c = _Check()
    c.fields(doc, "", {"apiVersion", "kind", "metadata", "spec"}, {"apiVersion", "kind", "metadata", "spec"})
    if doc.get("apiVersion") != "gateway.networking.k8s.io/v1" or doc.get("kind") != "HTTPRoute":
        c.fail("apiVersion/kind", "must be gateway.networking.k8s.io/v1 HTTPRoute")
    _metadata(c, doc)
    spec = doc.get("spec", {})
    if not c.fields(spec, "spec", {"parentRefs", "hostnames", "rules"}):
        return c.problems
    for i, ref in enumerate(c.items(spec.get("parentRefs", []), "spec.parentRefs", 1, 32)):
        _parent_ref(c, ref, f"spec.parentRefs[{i}]")
    for i, host in enumerate(c.items(spec.get("hostnames", []), "spec.hostnames", 0, 16)):
        c.string(host, f"spec.hostnames[{i}]", HOSTNAME)
    rules = c.items(spec.get("rules", []), "spec.rules", 1, 16)
    total = 0
    for i, rule in enumerate(rules):
        at = f"spec.rules[{i}]"
        if not c.fields(
            rule, at, {"name", "matches", "filters", "backendRefs", "timeouts", "retry", "sessionPersistence"}
        ):
            continue
        matches = c.items(rule.get("matches", []), f"{at}.matches", 0, 64)
        total += len(matches)
        for j, match in enumerate(matches):
            _route_match(c, match, f"{at}.matches[{j}]")
        filters = c.items(rule.get("filters", []), f"{at}.filters", 0, 16)
        for j, flt in enumerate(filters):
            _filter(c, flt, f"{at}.filters[{j}]")
        kinds = [f.get("type") for f in filters if isinstance(f, dict)]
        if kinds.count("URLRewrite") > 1:
            c.fail(f"{at}.filters", "URLRewrite may appear at most once")
        if "URLRewrite" in kinds and "RequestRedirect" in kinds:
            c.fail(f"{at}.filters", "URLRewrite and RequestRedirect may not be combined")
        for j, ref in enumerate(c.items(rule.get("backendRefs", []), f"{at}.backendRefs", 0, 16)):
            _backend_ref(c, ref, f"{at}.backendRefs[{j}]")
        if "timeouts" in rule:
            _timeouts(c, rule["timeouts"], f"{at}.timeouts")
    if total > 128:
        c.fail("spec.rules", f"{total} matches in all: at most 128")
    return c.problems


def check_reference_grant(doc: dict[str, Any]) -> list[str]:
    c = _Check()
    c.fields(doc, "", {"apiVersion", "kind", "metadata", "spec"}, {"apiVersion", "kind", "metadata", "spec"})
    if doc.get("apiVersion") != "gateway.networking.k8s.io/v1beta1" or doc.get("kind") != "ReferenceGrant":
        c.fail("apiVersion/kind", "must be gateway.networking.k8s.io/v1beta1 ReferenceGrant")
    _metadata(c, doc)
    spec = doc.get("spec", {})
    if not c.fields(spec, "spec", {"from", "to"}, {"from", "to"}):
        return c.problems
    for i, src in enumerate(c.items(spec["from"], "spec.from", 1, 16)):
        if c.fields(src, f"spec.from[{i}]", {"group", "kind", "namespace"}, {"group", "kind", "namespace"}):
            c.string(src["group"], f"spec.from[{i}].group", GROUP)
            c.string(src["kind"], f"spec.from[{i}].kind", KIND, 63)
            c.string(src["namespace"], f"spec.from[{i}].namespace", OBJECT_NAME, 63)
    for i, dst in enumerate(c.items(spec["to"], "spec.to", 1, 16)):
        if c.fields(dst, f"spec.to[{i}]", {"group", "kind", "name"}, {"group", "kind"}):
            c.string(dst["group"], f"spec.to[{i}].group", GROUP)
            c.string(dst["kind"], f"spec.to[{i}].kind", KIND, 63)
            if "name" in dst:
                c.string(dst["name"], f"spec.to[{i}].name", OBJECT_NAME)
    return c.problems


def duration_seconds(duration: str) -> float:
    return _seconds(duration)
