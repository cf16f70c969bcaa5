"""The deployment manifests: generated (never stale), rendered by `kubectl kustomize` for each
overlay, every object valid (kubernetes-validate --strict for core kinds; cloudcoil's typed models
plus a strict round trip for Knative, Istio and prometheus-operator; Gateway API and
CloudNativePG field by field), and consistent with the code: routes, probes, environment,
volume, function names, timeouts and connection budgets."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from common import routing
from common.config import Config
from common.variables import VARIABLES
from infra import manifests, plans
from tests.infra.gateway_api import check_http_route, check_reference_grant, duration_seconds
from tests.support import ROOT, function_names

OVERLAYS = ("dev", "prod", "prod-istio", "s3")
ON_THE_VOLUME = ("dev", "prod", "prod-istio")
KUBERNETES_VERSION = "1.32.0"  # the kubectl in the machine image; kubernetes-validate knows 1.25-1.37
README = (ROOT / "README.md").read_text()


def test_the_generated_files_are_up_to_date() -> None:
    stale = manifests.stale()
    assert stale == [], f"stale generated manifests, run `make manifests`: {stale}"


def test_every_generated_file_says_it_is_generated() -> None:
    for path, text in manifests.generated().items():
        assert text.startswith(manifests.HEADER), path


@cache
def rendered(overlay: str, under: str = "overlays") -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        message = "kubectl is not installed: the overlays were NOT rendered or validated"
        if os.environ.get("MEDIA_TEST_REQUIRE_KUBECTL") == "1":
            pytest.fail(message)
        pytest.skip(message)
    out = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "infra/k8s" / under / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def of_kind(docs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


# --- validation -------------------------------------------------------------------------------

CORE_KINDS = {"ConfigMap", "PersistentVolumeClaim", "Job", "Secret"}


def _round_trip(model: Any, doc: dict[str, Any]) -> None:
    parsed = model.model_validate(doc)
    dumped = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
    assert dumped == doc, f"{doc['kind']} {doc['metadata']['name']}: fields the model does not know"


def _knative(doc: dict[str, Any]) -> None:
    from cloudcoil.models.knative_serving.serving.v1 import Service

    _round_trip(Service, doc)


def _pod_monitor(doc: dict[str, Any]) -> None:
    from cloudcoil.models.prometheus_operator.v1 import PodMonitor

    _round_trip(PodMonitor, doc)


def _virtual_service(doc: dict[str, Any]) -> None:
    from cloudcoil.models.istio.networking.v1 import VirtualService

    _round_trip(VirtualService, doc)


def _eventing(doc: dict[str, Any]) -> None:
    import warnings

    with warnings.catch_warnings():  # the generated models name a field `name` (pydantic warns)
        warnings.simplefilter("ignore", UserWarning)
        from cloudcoil.models.knative_eventing.eventing import v1 as eventing
        from cloudcoil.models.knative_eventing.sources import v1 as sources

    model = {"Broker": eventing.Broker, "Trigger": eventing.Trigger}.get(doc["kind"]) or {
        "PingSource": sources.PingSource,
        "SinkBinding": sources.SinkBinding,
    }[doc["kind"]]
    _round_trip(model, doc)


def _core(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def _gateway(check: Callable[[dict[str, Any]], list[str]]) -> Callable[[dict[str, Any]], None]:
    def run(doc: dict[str, Any]) -> None:
        assert check(doc) == [], check(doc)

    return run


# CloudNativePG has no typed models on PyPI: the fields these manifests use, as its CRDs define them.
CNPG_FIELDS: dict[str, dict[str, set[str]]] = {
    "Cluster": {
        "spec": {"instances", "postgresql", "bootstrap", "storage"},
        "spec.postgresql": {"parameters"},
        "spec.bootstrap": {"initdb"},
        "spec.bootstrap.initdb": {"database", "owner"},
        "spec.storage": {"size", "storageClass"},
    },
    "Pooler": {
        "spec": {"cluster", "instances", "type", "pgbouncer"},
        "spec.cluster": {"name"},
        "spec.pgbouncer": {"poolMode", "parameters"},
    },
}
# PgBouncer parameters CloudNativePG lets a Pooler set (a subset of its allowlist).
CNPG_PGBOUNCER_PARAMETERS = {"max_client_conn", "default_pool_size", "min_pool_size", "reserve_pool_size"}


def _cnpg(doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] == "postgresql.cnpg.io/v1"
    for path, allowed in CNPG_FIELDS[doc["kind"]].items():
        node: Any = doc
        for key in path.split("."):
            node = node.get(key, {})
        assert set(node) <= allowed, f"{doc['kind']} {path}: unknown {set(node) - allowed}"
    spec = doc["spec"]
    assert isinstance(spec["instances"], int) and spec["instances"] >= 1
    if doc["kind"] == "Pooler":
        assert spec["type"] in ("rw", "ro") and spec["pgbouncer"]["poolMode"] in ("session", "transaction")
        assert set(spec["pgbouncer"]["parameters"]) <= CNPG_PGBOUNCER_PARAMETERS
        assert all(isinstance(v, str) for v in spec["pgbouncer"]["parameters"].values())
    else:
        assert all(isinstance(v, str) for v in spec["postgresql"]["parameters"].values())
        assert re.fullmatch(r"\d+(Gi|Mi|Ti)", spec["storage"]["size"])


VALIDATORS: dict[str, Callable[[dict[str, Any]], None]] = {
    **dict.fromkeys(CORE_KINDS, _core),
    "Service": _knative,
    "PodMonitor": _pod_monitor,
    "VirtualService": _virtual_service,
    "HTTPRoute": _gateway(check_http_route),
    "ReferenceGrant": _gateway(check_reference_grant),
    "Cluster": _cnpg,
    "Pooler": _cnpg,
    **dict.fromkeys(("Broker", "Trigger", "PingSource", "SinkBinding"), _eventing),
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates(overlay: str) -> None:
    docs = rendered(overlay)
    kinds = {d["kind"] for d in docs}
    assert kinds >= {
        "ConfigMap",
        *(["PersistentVolumeClaim"] if overlay in ON_THE_VOLUME else []),
        "Job",
        "Service",
        "PodMonitor",
        "Cluster",
        "Pooler",
    }
    for doc in docs:
        assert doc["kind"] in VALIDATORS, f"no validator for {doc['kind']}"
        VALIDATORS[doc["kind"]](doc)


def test_the_round_trip_catches_a_misspelt_field() -> None:
    """What the typed models alone would let through (they ignore unknown fields)."""
    doc = manifests.knative_service(plans.PLANS["upload"])
    doc["spec"]["template"]["spec"]["containerConcurency"] = 8
    with pytest.raises(AssertionError, match="fields the model does not know"):
        _knative(doc)
    route = manifests.http_route(plans.PLANS["upload"])
    route["spec"]["rules"][0]["filters"][0]["urlRewrite"]["hostName"] = "x"
    assert any("unknown field" in p for p in check_http_route(route))
    route = manifests.http_route(plans.PLANS["upload"])
    route["spec"]["rules"][0]["timeouts"]["request"] = "15 minutes"
    assert any("does not match" in p for p in check_http_route(route))


# --- consistency with the code ----------------------------------------------------------------


def _example_path(template: str) -> str:
    formats = routing.path_formats(template)
    return re.sub(
        r"\{([A-Za-z_]+)\}",
        lambda m: str(uuid.uuid4()) if formats.get(m.group(1)) == "uuid" else "v1.abc.def",
        template,
    )


def _gateway_routes(docs: tuple[dict[str, Any], ...]) -> Callable[[str, str], list[str]]:
    """Which hostnames (after the URLRewrite) the HTTPRoutes send a request to."""
    rules = [(rule, route) for route in of_kind(docs, "HTTPRoute") for rule in route["spec"]["rules"]]

    def send(method: str, path: str) -> list[str]:
        hosts = []
        for rule, _ in rules:
            for match in rule["matches"]:
                p = match["path"]
                hit = p["value"] == path if p["type"] == "Exact" else re.fullmatch(p["value"], path)
                if hit and match["method"] == method:
                    rewrite = next(f for f in rule["filters"] if f["type"] == "URLRewrite")
                    hosts.append(rewrite["urlRewrite"]["hostname"])
        return hosts

    return send


def _istio_routes(docs: tuple[dict[str, Any], ...]) -> Callable[[str, str], list[str]]:
    (service,) = of_kind(docs, "VirtualService")

    def send(method: str, path: str) -> list[str]:
        for http in service["spec"]["http"]:  # Istio: the first match wins
            for match in http["match"]:
                uri = match["uri"]
                hit = uri["exact"] == path if "exact" in uri else re.fullmatch(uri["regex"], path)
                if hit and match["method"]["exact"] == method:
                    return [http["rewrite"]["authority"]]
        return []

    return send


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_operation_reaches_its_function_and_nothing_else_is_routed(overlay: str) -> None:
    docs = rendered(overlay)
    send = _istio_routes(docs) if overlay.endswith("istio") else _gateway_routes(docs)
    services = {d["metadata"]["name"]: d for d in of_kind(docs, "Service")}
    for route in routing.public_routes():
        path = _example_path(route.path)
        methods = [route.method] + (["HEAD"] if route.method == "GET" else [])
        for method in methods:
            if method == "HEAD" and any(
                r.method == "HEAD" and r.path == route.path for r in routing.public_routes()
            ):
                continue
            hosts = send(method, path)
            assert hosts == [f"media-{route.function}.media.svc.cluster.local"], (method, route.path, hosts)
            assert f"media-{route.function}" in services
    media_id = str(uuid.uuid4())
    for method, path in [
        *((m, "/metrics") for m in ("GET", "HEAD", "POST")),
        ("GET", "/media/uploads"),  # not an id: the table has no GET there
        ("GET", "/media/not-a-uuid"),
        ("GET", f"/media/{media_id}/content/extra"),
        ("POST", f"/media/{media_id}"),
        ("GET", "/demo/"),  # make run's demo page is not deployed
        ("GET", "/"),
    ]:
        assert send(method, path) == [], (method, path)


def test_only_the_routing_table_is_in_the_routes() -> None:
    table = {(m.method, m.path) for plan in plans.PLANS.values() for m in manifests.matches_of(plan.function)}
    expected = {(r.method, r.path) for r in routing.public_routes()}
    expected |= {("HEAD", r.path) for r in routing.public_routes() if r.method == "GET"}
    assert table == expected


def _ksvcs(overlay: str) -> list[dict[str, Any]]:
    return [
        d for d in of_kind(rendered(overlay), "Service") if d["apiVersion"].startswith("serving.knative.dev/")
    ]


def _container(ksvc: dict[str, Any]) -> dict[str, Any]:
    (container,) = ksvc["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _env(ksvc: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "<from a Secret>") for e in _container(ksvc).get("env", [])}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_knative_service_runs_the_function_it_is_named_after(overlay: str) -> None:
    ksvcs = _ksvcs(overlay)
    assert sorted(k["metadata"]["name"] for k in ksvcs) == [f"media-{f}" for f in function_names()]
    assert sorted(plans.PLANS) == function_names() == sorted(routing.functions())
    for ksvc in ksvcs:
        function = ksvc["metadata"]["name"].removeprefix("media-")
        container = _container(ksvc)
        assert container["name"] == function
        image = container["image"].rsplit(":", 1)[0].rsplit("/", 1)[-1]
        assert image == f"media-{function}", container["image"]
        assert ksvc["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == function


def test_the_image_builds_the_function_it_is_named_for() -> None:
    dockerfile = (ROOT / "infra/Dockerfile").read_text()
    assert "FUNCTION_TARGET=${FUNCTION}" in dockerfile
    assert "COPY functions/${FUNCTION}/main.py /srv/main.py" in dockerfile
    make = (ROOT / "Makefile").read_text()
    assert "--build-arg FUNCTION=$$name" in make and "-t $(IMAGE_PREFIX)$$name:$(IMAGE_TAG)" in make


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_concurrency_probes_resources_and_security(overlay: str) -> None:
    served = {r.path for r in routing.routes() if r.probe and r.method == "GET"}
    for ksvc in _ksvcs(overlay):
        spec = ksvc["spec"]["template"]["spec"]
        container, env = _container(ksvc), _env(ksvc)
        assert spec["containerConcurrency"] == int(env["MEDIA_THREADS"]) * int(env["MEDIA_WORKERS"])
        assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
        assert {
            container["readinessProbe"]["httpGet"]["path"],
            container["livenessProbe"]["httpGet"]["path"],
        } <= served
        resources = container["resources"]
        assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert spec["securityContext"]["runAsUser"] == 65532
        annotations = ksvc["spec"]["template"]["metadata"]["annotations"]
        assert int(annotations["autoscaling.knative.dev/target"]) <= spec["containerConcurrency"]
        assert int(annotations["autoscaling.knative.dev/min-scale"]) <= int(
            annotations["autoscaling.knative.dev/max-scale"]
        )


def _mib(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
    return int(number) * (1024 if unit == "Gi" else 1)


def test_every_function_has_a_plan_and_an_unknown_one_gets_the_defaults() -> None:
    assert sorted(plans.PLANS) == function_names()
    default = plans.default_plan("newcomer")
    assert default.name == "media-newcomer" and default.min_scale == 0
    manifests.knative_service(default)  # renders like any other


def test_the_scaling_plans_follow_the_issue() -> None:
    plan = plans.PLANS
    assert plan["upload"].threads < plan["download"].threads  # upload low, download high
    assert plan["upload"].timeout_seconds >= plans.MAX_UPLOAD_BYTES / plans.SLOWEST_UPLINK_BYTES_PER_SECOND
    assert _mib(plan["upload"].memory[1]) >= _mib(plan["download"].memory[1])  # "more memory"
    assert plan["presign"].min_scale == plan["health"].min_scale == 0
    assert plan["download"].min_scale >= 1 and plan["upload"].min_scale >= 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_route_timeouts_cover_the_longest_request(overlay: str) -> None:
    docs = rendered(overlay)
    timeouts = {
        k["metadata"]["name"]: k["spec"]["template"]["spec"]["timeoutSeconds"] for k in _ksvcs(overlay)
    }
    for route in of_kind(docs, "HTTPRoute"):
        for rule in route["spec"]["rules"]:
            assert duration_seconds(rule["timeouts"]["request"]) >= timeouts[route["metadata"]["name"]]
    for service in of_kind(docs, "VirtualService"):
        for http in service["spec"]["http"]:
            name = http["rewrite"]["authority"].split(".")[0]
            assert duration_seconds(http["timeout"]) >= timeouts[name]
    upload = duration_seconds(manifests.route_timeout(plans.PLANS["upload"]))
    assert upload >= plans.MAX_UPLOAD_BYTES / plans.SLOWEST_UPLINK_BYTES_PER_SECOND


@pytest.mark.parametrize("overlay", ON_THE_VOLUME)
def test_the_cas_volume_is_mounted_where_the_config_says(overlay: str) -> None:
    docs = rendered(overlay)
    (config_map,) = of_kind(docs, "ConfigMap")
    (claim,) = of_kind(docs, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    data_dir = config_map["data"]["MEDIA_DATA_DIR"]
    cas_root = Config.from_env({"MEDIA_DATA_DIR": data_dir}).cas_root
    for ksvc in _ksvcs(overlay):
        spec = ksvc["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["name"]: m["mountPath"] for m in _container(ksvc)["volumeMounts"]}
        assert volumes["cas"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        assert mounts["cas"] == data_dir and cas_root.parent == Path(mounts["cas"])
        assert mounts["tmp"] == "/tmp" and "emptyDir" in volumes["tmp"]
    assert "mkdir -p /data /srv && chown 65532:65532 /data" in (ROOT / "infra/Dockerfile").read_text()


def test_the_s3_overlay_puts_the_cas_in_the_bucket_and_mounts_no_volume() -> None:
    docs = rendered("s3")
    assert of_kind(docs, "PersistentVolumeClaim") == []
    (config_map,) = of_kind(docs, "ConfigMap")
    config = Config.from_env(config_map["data"])
    assert config.storage == "s3" and config.s3_bucket == manifests.S3_VARIABLES["MEDIA_S3_BUCKET"]
    assert "MEDIA_DATA_DIR" not in config_map["data"]
    prod = {k["metadata"]["name"]: k for k in _ksvcs("prod")}

    def without_volumes(ksvc: dict[str, Any]) -> dict[str, Any]:
        copy = yaml.safe_load(yaml.safe_dump(ksvc))
        spec = copy["spec"]["template"]["spec"]
        spec.pop("volumes")
        spec["containers"][0].pop("volumeMounts")
        return dict(copy)

    for ksvc in _ksvcs("s3"):
        spec = ksvc["spec"]["template"]["spec"]
        assert [v["name"] for v in spec["volumes"]] == ["tmp"]
        assert [m["name"] for m in _container(ksvc)["volumeMounts"]] == ["tmp"]
        assert without_volumes(ksvc) == without_volumes(prod[ksvc["metadata"]["name"]])  # else prod's


def test_the_migration_job_mounts_the_volume_and_names_the_bucket() -> None:
    docs = rendered("migrate-store", under="jobs")
    (job,) = docs
    VALIDATORS["Job"](job)
    spec = job["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["command"][-4:] == ["--from", "fs", "--to", "s3"]
    assert container["image"].endswith("/media-upload:1.0.0")  # prod's registry and tag
    env = {e["name"]: e.get("value") for e in container["env"]}
    volume = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    (config_map,) = of_kind(rendered("prod"), "ConfigMap")
    assert volume["cas"] == config_map["data"]["MEDIA_DATA_DIR"]
    claims = [
        v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v
    ]
    assert claims == [manifests.VOLUME_CLAIM]
    configured = Config.from_env({**config_map["data"], **{k: v for k, v in env.items() if v}})
    assert configured.s3_bucket == manifests.S3_VARIABLES["MEDIA_S3_BUCKET"] and configured.storage == "fs"
    assert "PGPASSWORD" in env and {"configMapRef": {"name": manifests.CONFIG}} in container["envFrom"]


# Variables the code reads that may stay unset, and why.
OPTIONAL = {
    "MEDIA_JWT_SECRET": "HS256 tokens only; the deployment verifies RS256/ES256/EdDSA against the JWKS",
    "MEDIA_INTROSPECTION_URL": "introspection mode only (discovered from the issuer otherwise)",
    "MEDIA_INTROSPECTION_CLIENT_ID": "introspection mode only",
    "MEDIA_INTROSPECTION_CLIENT_SECRET": "introspection mode only",
    "MEDIA_PRESIGN_PREVIOUS_SECRET": "only while a presign key rotates",
    "MEDIA_CORS_ORIGINS": "no browser origin is allowed until set",
    "MEDIA_SECRETS_DIR": "OpenFaaS only: Knative hands the Secret over as variables",
    "MEDIA_S3_BUCKET": "MEDIA_STORAGE=s3 only (the base deploys MEDIA_STORAGE=fs on the volume)",
    "MEDIA_S3_ENDPOINT_URL": "MEDIA_STORAGE=s3 only; unset is AWS",
    "MEDIA_S3_PREFIX": "MEDIA_STORAGE=s3 only; unset is no prefix",
    "MEDIA_S3_REGION": "MEDIA_STORAGE=s3 only; unset is boto3's own region chain",
    "MEDIA_QUOTA_BYTES_PER_USER": "unset: no byte quota (a deployment chooses its own)",
    "MEDIA_QUOTA_FILES_PER_USER": "unset: no file quota",
}
PLATFORM = {
    "PORT": "Knative sets it",
    "K_REVISION": "Knative sets it",
    "K_SINK": "a SinkBinding sets it (unset: the drain finds the work)",
    "K_CE_OVERRIDES": "a SinkBinding sets it",
    "PGPASSWORD": "libpq reads it (CloudNativePG's Secret)",
    "FUNCTION_TARGET": "the image sets it",
    "FUNCTION_SOURCE": "the image sets it",
}


def _read_by_code() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "common").glob("*.py"):
        text = path.read_text()
        # os.environ and what is bound to it as `env` (a WSGI `environ` is not the environment)
        names |= set(re.findall(r"(?:os\.environ|\benv)\.get\(\s*\"([A-Z][A-Z0-9_]*)\"", text))
        names |= set(re.findall(r"_[a-z_]+\(env, \"([A-Z][A-Z0-9_]*)\"", text))
    return names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_variable_the_code_reads_is_set_or_has_a_default(overlay: str) -> None:
    docs = rendered(overlay)
    (config_map,) = of_kind(docs, "ConfigMap")
    defaults = {v.name: v.default for v in VARIABLES}
    known = set(defaults) | set(PLATFORM)
    read = _read_by_code()
    assert {"MEDIA_DATABASE_URL", "PORT", "K_REVISION", "MEDIA_THREADS"} <= read  # the scan works
    for ksvc in _ksvcs(overlay):
        set_here = set(_env(ksvc)) | set(config_map["data"]) | set(manifests.SECRET_KEYS)
        assert set_here <= known, f"set but read by nothing: {set_here - known}"
        for name in read:
            has_default = defaults.get(name) is not None or name in (
                "HOST",
                "FUNCTION_SIGNATURE_TYPE",
                "PROMETHEUS_MULTIPROC_DIR",
            )
            assert has_default or name in set_here or name in PLATFORM or name in OPTIONAL, name
    job = of_kind(docs, "Job")[0]["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"] for e in job["env"]} | set(config_map["data"]) >= {
        "MEDIA_DATABASE_URL",
        "MEDIA_DB_POOLING",
    }
    for key in manifests.SECRET_KEYS:
        assert key in README, f"README must say the Secret holds {key}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_events_reach_the_process_functions_internal_route_and_every_function_gets_k_sink(
    overlay: str,
) -> None:
    docs = rendered(overlay)
    route = manifests.events_route()
    (trigger,) = of_kind(docs, "Trigger")
    (ping,) = of_kind(docs, "PingSource")
    (binding,) = of_kind(docs, "SinkBinding")
    (broker,) = of_kind(docs, "Broker")
    for subscriber in (trigger["spec"]["subscriber"], ping["spec"]["sink"]):
        assert subscriber["ref"]["name"] == plans.PLANS[route.function].name
        assert subscriber["uri"] == route.path == "/events"
    assert trigger["spec"]["filter"]["attributes"] == {"type": "media.uploaded"}
    assert trigger["spec"]["broker"] == broker["metadata"]["name"]
    assert binding["spec"]["sink"]["ref"]["name"] == broker["metadata"]["name"]
    selector = binding["spec"]["subject"]["selector"]["matchLabels"]
    ksvcs = _ksvcs(overlay)
    assert {k["metadata"]["name"] for k in ksvcs} == {p.name for p in plans.PLANS.values()}
    assert all(selector.items() <= k["metadata"]["labels"].items() for k in ksvcs)


def test_the_connection_budget_fits() -> None:
    clients = sum(p.max_scale * p.workers * p.pool for p in plans.PLANS.values())
    assert 2 * clients <= plans.client_connection_budget()
    assert plans.POOLER_INSTANCES * plans.POOLER_SERVER_CONNECTIONS < plans.MAX_CONNECTIONS - 10


def test_the_pod_monitor_scrapes_every_function_on_its_own_port() -> None:
    monitor = manifests.pod_monitor()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["port"] == "user-port"
    (_, components) = monitor["spec"]["selector"]["matchExpressions"]
    assert components["values"] == function_names()


def test_the_openfaas_stack_carries_the_same_functions(tmp_path: Path) -> None:
    stack = yaml.safe_load((ROOT / "infra/openfaas/stack.yml").read_text())
    assert sorted(stack["functions"]) == [f"media-{f}" for f in function_names()]
    known = {v.name for v in VARIABLES} | {"AWS_SHARED_CREDENTIALS_FILE"}
    for name, fn in stack["functions"].items():
        plan = plans.PLANS[name.removeprefix("media-")]
        assert fn["build_args"] == {"FUNCTION": plan.function}
        assert fn["labels"]["com.openfaas.scale.max"] == str(plan.max_scale)
        assert {"com.openfaas.scale.min", "com.openfaas.scale.target"} <= set(fn["labels"])
        assert set(fn["environment"]) <= known
        assert fn["annotations"]["com.openfaas.health.http.path"] == "/health/ready"
    environment = next(iter(stack["functions"].values()))["environment"]
    assert set(manifests.S3_VARIABLES) <= set(environment)
    # The Secret as OpenFaaS mounts it: one file per key, where MEDIA_SECRETS_DIR says.
    assert environment["MEDIA_SECRETS_DIR"] == manifests.OPENFAAS_SECRETS
    assert environment["AWS_SHARED_CREDENTIALS_FILE"].startswith(manifests.OPENFAAS_SECRETS + "/")
    for key in manifests.SECRET_KEYS:
        (tmp_path / key).write_text(manifests.SECRET_KEYS[key])
    config = Config.from_env({**environment, "MEDIA_SECRETS_DIR": str(tmp_path)})
    assert config.storage == "s3" and config.database_url == manifests.SECRET_KEYS["MEDIA_DATABASE_URL"]


def test_readme_names_the_knative_feature_flags_and_the_apply_order() -> None:
    for flag in (
        "kubernetes.podspec-persistent-volume-claim",
        "kubernetes.podspec-persistent-volume-write",
        "kubernetes.podspec-securitycontext",
        "max-revision-timeout-seconds",
    ):
        assert flag in README, flag
    for stage in ("database", "migration", "service", "events"):
        assert f"{manifests.STAGE_LABEL}={stage}" in README, stage


def test_the_search_indexer_example_subscribes_to_the_change_feed_on_our_broker() -> None:
    from common.sql_recipes import CHANGE_TYPES

    (trigger,) = list(yaml.safe_load_all((ROOT / "infra/examples/search-indexer-trigger.yaml").read_text()))
    assert trigger["kind"] == "Trigger" and trigger["spec"]["broker"] == manifests.BROKER
    assert trigger["metadata"]["namespace"] == plans.NAMESPACE
    assert trigger["spec"]["filters"] == [{"prefix": {"type": CHANGE_TYPES}}]
