"""Every deployment manifest, generated from the routing table (`common/openapi.yaml`), the
configuration (`common/config.py`) and the scaling plans (`infra/plans.py`): `make manifests` writes them,
and a test fails when a committed file differs from what this module writes. Never edit a
generated file by hand: change this module or the routing table, then run `make manifests`.

What it writes (under infra/):
- k8s/base: the ConfigMap, the CAS volume (a ReadWriteMany PVC), the CloudNativePG `Cluster` and
  its PgBouncer `Pooler` (transaction mode), the migration `Job`, one Knative `Service` per
  function, one Gateway API `HTTPRoute` per function with the `ReferenceGrant` it needs, and the
  `PodMonitor`; and events.yaml (Broker, SinkBinding, Trigger, PingSource). Each object carries
  the label `media.recipes/apply-stage` (database, migration, service, events): README's apply
  order applies them stage by stage.
- k8s/components/istio: the same routes as one Istio `VirtualService`, instead of the HTTPRoutes.
- k8s/overlays/dev and prod: image names and tags, scale bounds, storage class, resources.
- k8s/overlays/s3: prod with the CAS in a bucket (MEDIA_STORAGE=s3): no PVC, no volume mounted.
- k8s/jobs/migrate-store: the Job that copies the volume's blobs into the bucket while serving.
- openfaas/stack.yml: the same functions for OpenFaaS, with per-function scaling labels.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from common import routing
from common.records import UPLOADED_EVENT
from infra.plans import (
    APP,
    MAX_CONNECTIONS,
    MAX_UPLOAD_BYTES,
    NAMESPACE,
    OVERLAYS,
    PLANS,
    POOLER_INSTANCES,
    POOLER_SERVER_CONNECTIONS,
    Overlay,
    Plan,
    client_connection_budget,
)

ROOT = Path(__file__).resolve().parent
STAGE_LABEL = "media.recipes/apply-stage"
IMAGE_PREFIX = "media-"  # overlays map these names to a registry and a tag (kustomize `images`)
CAS_MOUNT = "/data"  # MEDIA_DATA_DIR; the CAS is <MEDIA_DATA_DIR>/cas
PORT = 8080
PUBLIC_HOST = "media.example.com"
# The Gateway the platform team runs (overlays change it), and Knative's internal gateway, which
# routes by Host to a ksvc's revisions (Kourier's here; Istio's is knative-local-gateway).
GATEWAY = {"name": "public", "namespace": "gateway-system"}
KNATIVE_INTERNAL_GATEWAY_NAME = "kourier-internal"
KNATIVE_INTERNAL_GATEWAY_NAMESPACE = "kourier-system"
ISTIO_LOCAL_GATEWAY = "knative-local-gateway.istio-system.svc.cluster.local"
ISTIO_GATEWAY = "knative-serving/knative-ingress-gateway"
DATABASE = "media-db"
POOLER = f"{DATABASE}-pooler-rw"
DATABASE_SECRET = f"{DATABASE}-app"  # CloudNativePG writes the app user's credentials here
SECRET = "media-secrets"  # noqa: S105 - its name; the operator creates it (README, Deploying)
CONFIG = "media-config"
VOLUME_CLAIM = "media-cas"


def labels(component: str, stage: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": APP,
        "app.kubernetes.io/part-of": APP,
        "app.kubernetes.io/component": component,
        STAGE_LABEL: stage,
    }


def metadata(name: str, component: str, stage: str, namespace: str = NAMESPACE) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels(component, stage)}


# --- configuration ----------------------------------------------------------------------------

# What the Secret holds (README, Deploying). MEDIA_DATABASE_URL names the pooler and carries no
# password: PGPASSWORD comes from CloudNativePG's own Secret, which it rotates.
SECRET_KEYS = {
    "MEDIA_DATABASE_URL": f"postgresql://{APP}@{POOLER}.{NAMESPACE}.svc:5432/{APP}?sslmode=require",
    "MEDIA_PRESIGN_SECRET": "(openssl rand -hex 32)",
    "MEDIA_JWKS_URL": "https://id.example.com/realms/recipes/protocol/openid-connect/certs",
    "MEDIA_JWT_ISSUER": "https://id.example.com/realms/recipes",
    "MEDIA_JWT_AUDIENCE": "media",
}

# The bucket of the S3 overlay, the migration Job and OpenFaaS (which mounts no volumes): change
# these for yours. Credentials are not here: the Secret's AWS_* keys, or the pods' web identity.
S3_VARIABLES = {
    "MEDIA_STORAGE": "s3",
    "MEDIA_S3_BUCKET": "recipes-media",
    "MEDIA_S3_ENDPOINT_URL": "https://s3.example.com",
    "MEDIA_S3_PREFIX": "media",
    "MEDIA_S3_REGION": "eu-west-1",
}
OPENFAAS_SECRETS = "/var/openfaas/secrets"  # one file per key of media-secrets (MEDIA_SECRETS_DIR)

CONFIG_VALUES = {
    "MEDIA_DATA_DIR": CAS_MOUNT,
    "MEDIA_PUBLIC_BASE_URL": f"https://{PUBLIC_HOST}",
    "MEDIA_AUTH_MODE": "offline",
    "MEDIA_JWT_ALGORITHMS": "RS256,ES256,EdDSA",
    "MEDIA_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
    "MEDIA_DB_POOLING": "transaction",
    "MEDIA_DB_TIMEOUT_SECONDS": "2",
    "MEDIA_TRUSTED_PROXY_HOPS": "1",
    "MEDIA_BODY_IDLE_TIMEOUT_SECONDS": "60",
    "MEDIA_LOG_LEVEL": "INFO",
    "MEDIA_AUDIT_LOG": "on",
    "MEDIA_METRICS_HTTP": "on",
    "MEDIA_METRICS_BUSINESS": "on",
    "MEDIA_METRICS_SYSTEM": "on",
}


def config_map() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(CONFIG, "config", "database"),
        "data": dict(CONFIG_VALUES),
    }


def cas_volume() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(VOLUME_CLAIM, "storage", "database"),
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "storageClassName": "rwx",  # overlays: an RWX class (NFS, CephFS, EFS, Filestore...)
            "resources": {"requests": {"storage": "100Gi"}},
        },
    }


# --- PostgreSQL ------------------------------------------------------------------------------


def database() -> list[dict[str, Any]]:
    cluster = {
        "apiVersion": "postgresql.cnpg.io/v1",
        "kind": "Cluster",
        "metadata": metadata(DATABASE, "database", "database"),
        "spec": {
            "instances": 3,
            "postgresql": {"parameters": {"max_connections": str(MAX_CONNECTIONS)}},
            "bootstrap": {"initdb": {"database": APP, "owner": APP}},
            "storage": {"size": "20Gi"},
        },
    }
    pooler = {
        "apiVersion": "postgresql.cnpg.io/v1",
        "kind": "Pooler",
        "metadata": metadata(POOLER, "database", "database"),
        "spec": {
            "cluster": {"name": DATABASE},
            "instances": POOLER_INSTANCES,
            "type": "rw",
            "pgbouncer": {
                "poolMode": "transaction",
                "parameters": {
                    "max_client_conn": str(client_connection_budget()),
                    "default_pool_size": str(POOLER_SERVER_CONNECTIONS),
                },
            },
        },
    }
    return [cluster, pooler]


def migration_job() -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(f"{APP}-migrate", "migration", "migration"),
        "spec": {
            "backoffLimit": 3,
            "activeDeadlineSeconds": 600,
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": labels("migration", "migration")},
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": _pod_security(),
                    "containers": [
                        {
                            "name": "migrate",
                            "image": f"{IMAGE_PREFIX}upload",
                            "command": ["python", "-m", "common.migrate"],
                            "env": [
                                # PostgreSQL itself (the -rw service), not the pooler: the
                                # migration lock is a session's.
                                {
                                    "name": "MEDIA_DATABASE_URL",
                                    "valueFrom": {"secretKeyRef": {"name": DATABASE_SECRET, "key": "uri"}},
                                },
                            ],
                            "envFrom": [{"configMapRef": {"name": CONFIG}}],
                            "resources": {
                                "requests": {"cpu": "100m", "memory": "128Mi"},
                                "limits": {"cpu": "500m", "memory": "256Mi"},
                            },
                            "securityContext": _container_security(),
                        }
                    ],
                },
            },
        },
    }


def _pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security() -> dict[str, Any]:
    return {
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


# --- the functions ---------------------------------------------------------------------------

PROBES = {route.operation_id: route.path for route in routing.routes() if route.probe}


def knative_service(plan: Plan) -> dict[str, Any]:
    component = plan.function
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {
            "name": plan.name,
            "namespace": NAMESPACE,
            # Reached through the HTTPRoutes only: no public hostname of its own.
            "labels": {**labels(component, "service"), "networking.knative.dev/visibility": "cluster-local"},
        },
        "spec": {
            "template": {
                "metadata": {
                    "labels": labels(component, "service"),
                    "annotations": {
                        "autoscaling.knative.dev/class": "kpa.autoscaling.knative.dev",
                        "autoscaling.knative.dev/metric": "concurrency",
                        "autoscaling.knative.dev/target": str(plan.target),
                        "autoscaling.knative.dev/min-scale": str(plan.min_scale),
                        "autoscaling.knative.dev/max-scale": str(plan.max_scale),
                    },
                },
                "spec": {
                    "containerConcurrency": plan.threads * plan.workers,
                    "timeoutSeconds": plan.timeout_seconds,
                    "responseStartTimeoutSeconds": plan.response_start_timeout_seconds,
                    "securityContext": _pod_security(),
                    "containers": [
                        {
                            "name": component,
                            "image": f"{IMAGE_PREFIX}{plan.function}",
                            "ports": [{"name": "http1", "containerPort": PORT}],
                            "env": [
                                {"name": "MEDIA_THREADS", "value": str(plan.threads)},
                                {"name": "MEDIA_WORKERS", "value": str(plan.workers)},
                                {"name": "MEDIA_DB_POOL_MAX", "value": str(plan.pool)},
                                {
                                    "name": "PGPASSWORD",  # libpq reads it; CloudNativePG rotates it
                                    "valueFrom": {
                                        "secretKeyRef": {"name": DATABASE_SECRET, "key": "password"}
                                    },
                                },
                            ],
                            "envFrom": [
                                {"configMapRef": {"name": CONFIG}},
                                {"secretRef": {"name": SECRET}},
                            ],
                            "resources": {
                                "requests": {"cpu": plan.cpu[0], "memory": plan.memory[0]},
                                "limits": {"cpu": plan.cpu[1], "memory": plan.memory[1]},
                            },
                            "readinessProbe": {
                                "httpGet": {"path": PROBES["ready"]},
                                "periodSeconds": 5,
                                "timeoutSeconds": 3,
                                "failureThreshold": 2,
                            },
                            "livenessProbe": {
                                "httpGet": {"path": PROBES["live"]},
                                "periodSeconds": 10,
                                "timeoutSeconds": 2,
                                "failureThreshold": 3,
                            },
                            "securityContext": _container_security(),
                            "volumeMounts": [
                                {"name": "cas", "mountPath": CAS_MOUNT},
                                {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - the emptyDir
                            ],
                        }
                    ],
                    "volumes": [
                        {
                            "name": "cas",
                            "persistentVolumeClaim": {"claimName": VOLUME_CLAIM, "readOnly": False},
                        },
                        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
                    ],
                },
            }
        },
    }


# --- routes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    method: str
    path: str  # the template
    exact: bool  # no parameters: an exact path, else the anchored regex of routing.path_regex

    @property
    def value(self) -> str:
        return self.path if self.exact else routing.path_regex(self.path)


def matches_of(function: str) -> list[Match]:
    """Every (method, path) of the routing table this function serves; GET routes answer HEAD too."""
    explicit = {(route.method, route.path) for route in routing.public_routes()}
    found: list[Match] = []
    for route in routing.public_routes():
        if route.function != function:
            continue
        methods = [route.method]
        if route.method == "GET" and ("HEAD", route.path) not in explicit:
            methods.append("HEAD")
        for method in methods:
            found.append(Match(method, route.path, "{" not in route.path))
    return found


def route_timeout(plan: Plan) -> str:
    return f"{plan.timeout_seconds}s"


def http_route(plan: Plan) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": metadata(plan.name, plan.function, "service"),
        "spec": {
            "parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", **GATEWAY}],
            "hostnames": [PUBLIC_HOST],
            "rules": [
                {
                    "matches": [
                        {
                            "path": {"type": "Exact" if m.exact else "RegularExpression", "value": m.value},
                            "method": m.method,
                        }
                        for m in matches_of(plan.function)
                    ],
                    # Knative's internal gateway picks the ksvc by Host. (The ksvc's own Service
                    # is an ExternalName, which common gateways refuse as a backend.)
                    "filters": [{"type": "URLRewrite", "urlRewrite": {"hostname": plan.host}}],
                    "backendRefs": [
                        {
                            "group": "",
                            "kind": "Service",
                            "name": KNATIVE_INTERNAL_GATEWAY_NAME,
                            "namespace": KNATIVE_INTERNAL_GATEWAY_NAMESPACE,
                            "port": 80,
                        }
                    ],
                    "timeouts": {"request": route_timeout(plan), "backendRequest": route_timeout(plan)},
                }
            ],
        },
    }


def reference_grant() -> dict[str, Any]:
    """Lets the HTTPRoutes in NAMESPACE point at Knative's internal gateway in its namespace."""
    return {
        "apiVersion": "gateway.networking.k8s.io/v1beta1",
        "kind": "ReferenceGrant",
        "metadata": metadata(f"{APP}-routes", "routing", "service", KNATIVE_INTERNAL_GATEWAY_NAMESPACE),
        "spec": {
            "from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": NAMESPACE}],
            "to": [{"group": "", "kind": "Service", "name": KNATIVE_INTERNAL_GATEWAY_NAME}],
        },
    }


def virtual_service() -> dict[str, Any]:
    """The routing table as one Istio VirtualService, for clusters whose Knative runs on Istio."""
    http: list[dict[str, Any]] = []
    for plan in PLANS.values():
        for m in matches_of(plan.function):
            uri = {"exact": m.value} if m.exact else {"regex": m.value}
            http.append(
                {
                    "name": f"{plan.function}-{m.method.lower()}-{_slug(m.path)}",
                    "match": [{"uri": uri, "method": {"exact": m.method}}],
                    "rewrite": {"authority": plan.host},
                    "route": [{"destination": {"host": ISTIO_LOCAL_GATEWAY, "port": {"number": 80}}}],
                    "timeout": route_timeout(plan),
                }
            )
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": metadata(APP, "routing", "service"),
        "spec": {"hosts": [PUBLIC_HOST], "gateways": [ISTIO_GATEWAY], "http": http},
    }


def _slug(path: str) -> str:
    return "-".join(p.strip("{}") for p in path.split("/") if p) or "root"


def pod_monitor() -> dict[str, Any]:
    """Prometheus scrapes /metrics on each pod's own port (Knative names it user-port), beside
    queue-proxy: never through the ingress, which does not route it."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": metadata(APP, "monitoring", "service"),
        "spec": {
            "selector": {
                "matchExpressions": [
                    {"key": "app.kubernetes.io/part-of", "operator": "In", "values": [APP]},
                    {"key": "app.kubernetes.io/component", "operator": "In", "values": sorted(PLANS)},
                ]
            },
            "podMetricsEndpoints": [{"port": "user-port", "path": "/metrics", "interval": "30s"}],
        },
    }


# --- events: the outbox's CloudEvents to the process function -------------------------------

BROKER = APP


def events_route() -> routing.Route:
    """The internal route the events are delivered to (the process function's /events)."""
    route = routing.events_route()
    assert route is not None, "the routing table has no internal POST route for events"
    return route


def eventing() -> list[dict[str, Any]]:
    """Broker, SinkBinding (K_SINK into the functions that write the outbox), Trigger
    (`media.uploaded` to the process function) and PingSource (the drain, every minute)."""
    route = events_route()
    receiver = PLANS[route.function]
    subscriber = {
        "ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": receiver.name},
        "uri": route.path,
    }
    broker = {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "metadata": metadata(BROKER, "events", "events"),
        "spec": {
            # Knative retries a delivery with backoff; what still fails is left to the drain, which
            # finds every unprocessed job in the database: no dead-letter sink is needed.
            "delivery": {"retry": 5, "backoffPolicy": "exponential", "backoffDelay": "PT1S"},
        },
    }
    binding = {
        "apiVersion": "sources.knative.dev/v1",
        "kind": "SinkBinding",
        "metadata": metadata(f"{APP}-outbox", "events", "events"),
        "spec": {
            "subject": {
                "apiVersion": "serving.knative.dev/v1",
                "kind": "Service",
                # every function: the ones that write the outbox (upload; process, whose drain
                # sends what is left) need K_SINK, and the others never read it
                "selector": {"matchLabels": {"app.kubernetes.io/part-of": APP}},
            },
            "sink": {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": BROKER}},
        },
    }
    trigger = {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": metadata(f"{APP}-uploaded", "events", "events"),
        "spec": {
            "broker": BROKER,
            "filter": {"attributes": {"type": UPLOADED_EVENT}},
            "subscriber": subscriber,
        },
    }
    ping = {
        "apiVersion": "sources.knative.dev/v1",
        "kind": "PingSource",
        "metadata": metadata(f"{APP}-drain", "events", "events"),
        "spec": {
            "schedule": "* * * * *",
            "contentType": "application/json",
            "data": "{}",
            "sink": subscriber,
        },
    }
    return [broker, binding, trigger, ping]


# --- overlays and OpenFaaS -------------------------------------------------------------------


def kustomization_base() -> dict[str, Any]:
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [name for name, _ in BASE_FILES],
    }


def kustomization_overlay(overlay: Overlay) -> dict[str, Any]:
    patches: list[dict[str, Any]] = []
    for name, plan in PLANS.items():
        low, high = overlay.scale[name]
        cpu, memory = overlay.resources[name]
        ops = [
            _replace("/spec/template/metadata/annotations/autoscaling.knative.dev~1min-scale", str(low)),
            _replace("/spec/template/metadata/annotations/autoscaling.knative.dev~1max-scale", str(high)),
            _replace(
                "/spec/template/spec/containers/0/resources",
                {
                    "requests": {"cpu": cpu[0], "memory": memory[0]},
                    "limits": {"cpu": cpu[1], "memory": memory[1]},
                },
            ),
        ]
        patches.append(_ksvc_patch(plan.name, ops))
    patches.append(
        {
            "target": {"version": "v1", "kind": "PersistentVolumeClaim", "name": VOLUME_CLAIM},
            "patch": yaml.safe_dump([_replace("/spec/storageClassName", overlay.storage_class)]),
        }
    )
    patches.append(
        {
            "target": {"group": "postgresql.cnpg.io", "version": "v1", "kind": "Cluster", "name": DATABASE},
            "patch": yaml.safe_dump([_replace("/spec/instances", overlay.database_instances)]),
        }
    )
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["../../base"],
        "images": [
            {
                "name": f"{IMAGE_PREFIX}{name}",
                "newName": f"{overlay.registry}/{IMAGE_PREFIX}{name}",
                "newTag": overlay.tags[name],
            }
            for name in PLANS
        ],
        "patches": patches,
    }


def kustomization_s3() -> dict[str, Any]:
    """prod with the CAS in a bucket: the ConfigMap says so, and the volume goes from every pod."""
    config_ops = [_remove("/data/MEDIA_DATA_DIR")] + [
        {"op": "add", "path": f"/data/{name}", "value": value} for name, value in S3_VARIABLES.items()
    ]
    patches: list[dict[str, Any]] = [
        {
            "target": {"version": "v1", "kind": "ConfigMap", "name": CONFIG},
            "patch": yaml.safe_dump(config_ops, sort_keys=False),
        },
        {
            "target": {"version": "v1", "kind": "PersistentVolumeClaim", "name": VOLUME_CLAIM},
            "patch": yaml.safe_dump(
                {
                    "$patch": "delete",
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {"name": VOLUME_CLAIM},
                },
                sort_keys=False,
            ),
        },
    ]
    for plan in PLANS.values():
        spec = knative_service(plan)["spec"]["template"]["spec"]
        mount = [m["name"] for m in spec["containers"][0]["volumeMounts"]].index("cas")
        volume = [v["name"] for v in spec["volumes"]].index("cas")
        base = "/spec/template/spec"
        ops = [  # `test` first: a reordered base fails the render instead of dropping another volume
            {"op": "test", "path": f"{base}/containers/0/volumeMounts/{mount}/name", "value": "cas"},
            _remove(f"{base}/containers/0/volumeMounts/{mount}"),
            {"op": "test", "path": f"{base}/volumes/{volume}/name", "value": "cas"},
            _remove(f"{base}/volumes/{volume}"),
        ]
        patches.append(_ksvc_patch(plan.name, ops))
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["../prod"],
        "patches": patches,
    }


def migrate_store_job() -> dict[str, Any]:
    """`python -m common.migrate_store --from fs --to s3` next to the serving functions: the
    volume mounted, the bucket configured (README, Storage: moving between stores)."""
    plan = PLANS["upload"]
    service = knative_service(plan)["spec"]["template"]["spec"]
    container = service["containers"][0]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(f"{APP}-migrate-store", "migrate-store", "service"),
        "spec": {
            "backoffLimit": 6,  # each retry resumes where the last one stopped
            "activeDeadlineSeconds": 7 * 86400,
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": labels("migrate-store", "service")},
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": _pod_security(),
                    "containers": [
                        {
                            "name": "migrate-store",
                            "image": f"{IMAGE_PREFIX}upload",
                            "command": ["python", "-m", "common.migrate_store", "--from", "fs", "--to", "s3"],
                            "env": [
                                *(e for e in container["env"] if e["name"] == "PGPASSWORD"),
                                *(
                                    {"name": k, "value": v}
                                    for k, v in S3_VARIABLES.items()
                                    if k != "MEDIA_STORAGE"
                                ),
                            ],
                            "envFrom": container["envFrom"],
                            "resources": {
                                "requests": {"cpu": "250m", "memory": "256Mi"},
                                "limits": {"cpu": "1000m", "memory": "512Mi"},
                            },
                            "securityContext": _container_security(),
                            "volumeMounts": container["volumeMounts"],
                        }
                    ],
                    "volumes": service["volumes"],
                },
            },
        },
    }


def kustomization_migrate_store() -> dict[str, Any]:
    prod = next(o for o in OVERLAYS if o.name == "prod")
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["job.yaml"],
        "images": [
            {
                "name": f"{IMAGE_PREFIX}upload",
                "newName": f"{prod.registry}/{IMAGE_PREFIX}upload",
                "newTag": prod.tags["upload"],
            }
        ],
    }


def _remove(path: str) -> dict[str, Any]:
    return {"op": "remove", "path": path}


def _ksvc_patch(name: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
    """A JSON patch of the Knative Service `name`."""
    target = {"group": "serving.knative.dev", "version": "v1", "kind": "Service", "name": name}
    return {"target": target, "patch": yaml.safe_dump(ops, sort_keys=False)}


def _replace(path: str, value: Any) -> dict[str, Any]:
    return {"op": "replace", "path": path, "value": value}


def istio_component() -> dict[str, Any]:
    gone = [
        {"target": {"group": "gateway.networking.k8s.io", "kind": kind}, "patch": _delete(kind, api)}
        for kind, api in (("HTTPRoute", "v1"), ("ReferenceGrant", "v1beta1"))
    ]
    return {
        "apiVersion": "kustomize.config.k8s.io/v1alpha1",
        "kind": "Component",
        "resources": ["virtualservice.yaml"],
        "patches": gone,
    }


def _delete(kind: str, api: str) -> str:
    return yaml.safe_dump(
        {
            "$patch": "delete",
            "apiVersion": f"gateway.networking.k8s.io/{api}",
            "kind": kind,
            "metadata": {"name": "any"},
        },
        sort_keys=False,
    )


def openfaas_stack() -> dict[str, Any]:
    functions: dict[str, Any] = {}
    for name, plan in PLANS.items():
        functions[plan.name] = {
            "lang": "dockerfile",
            "handler": ".",
            "image": f"registry.example.com/recipes/{IMAGE_PREFIX}{name}:1.0.0",
            "build_args": {"FUNCTION": name},
            "environment": {
                **{k: v for k, v in CONFIG_VALUES.items() if k != "MEDIA_DATA_DIR"},
                "MEDIA_THREADS": str(plan.threads),
                "MEDIA_WORKERS": str(plan.workers),
                "MEDIA_DB_POOL_MAX": str(plan.pool),
                **S3_VARIABLES,
                "MEDIA_SECRETS_DIR": OPENFAAS_SECRETS,
                # the bucket's keys as an AWS credentials file, one more key of media-secrets
                "AWS_SHARED_CREDENTIALS_FILE": f"{OPENFAAS_SECRETS}/aws-credentials",
            },
            "secrets": ["media-secrets"],
            "readonly_root_filesystem": True,
            "labels": {
                "com.openfaas.scale.min": str(plan.min_scale or 1),
                "com.openfaas.scale.max": str(plan.max_scale),
                "com.openfaas.scale.type": "capacity",
                "com.openfaas.scale.target": str(plan.target),
                "com.openfaas.scale.target-proportion": "0.75",
                "com.openfaas.scale.zero": "true" if plan.min_scale == 0 else "false",
            },
            "annotations": {"com.openfaas.health.http.path": PROBES["ready"]},
            "requests": {"cpu": plan.cpu[0], "memory": plan.memory[0]},
            "limits": {"cpu": plan.cpu[1], "memory": plan.memory[1]},
        }
    return {
        "version": 1.0,
        "provider": {"name": "openfaas", "gateway": "http://127.0.0.1:8080"},
        "configuration": {"templates": [{"name": "dockerfile"}]},
        "functions": functions,
    }


# --- writing ---------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (kustomize patches) as literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)

HEADER = "# GENERATED by infra/manifests.py from common/openapi.yaml: do not edit, run `make manifests`.\n"


def _dump(docs: Iterable[dict[str, Any]], comments: Iterable[str] = ()) -> str:
    parts = []
    for doc, comment in zip(docs, [*comments] + [""] * 100, strict=False):
        text = "".join(f"# {line}\n" if line else "#\n" for line in _wrap(comment)) if comment else ""
        parts.append(text + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=110))
    return HEADER + "---\n".join(parts)


def _wrap(text: str, width: int = 98) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line] if line else lines


BASE_FILES: list[tuple[str, Any]] = [
    ("config.yaml", lambda: _dump([config_map()])),
    ("storage.yaml", lambda: _dump([cas_volume()])),
    ("database.yaml", lambda: _dump(database(), _database_comments())),
    (
        "migrate.yaml",
        lambda: _dump([migration_job()], ["Must complete before the functions roll out (README)."]),
    ),
    (
        "functions.yaml",
        lambda: _dump(
            [knative_service(p) for p in PLANS.values()], [f"{p.name}: {p.why}" for p in PLANS.values()]
        ),
    ),
    # A function with no public route (process) gets no HTTPRoute: one with no matches would match
    # every request.
    (
        "routes.yaml",
        lambda: _dump(
            [*(http_route(p) for p in PLANS.values() if matches_of(p.function)), reference_grant()]
        ),
    ),
    ("monitoring.yaml", lambda: _dump([pod_monitor()])),
    (
        "events.yaml",
        lambda: _dump(
            eventing(),
            [
                "Where the outbox's CloudEvents go. Knative Eventing (its Broker implementation) must run.",
                "K_SINK and K_CE_OVERRIDES for the functions: the outbox's events go to the Broker.",
                "media.uploaded to the process function's internal /events.",
                "The drain, every minute: whatever an event did not reach is processed from the database.",
            ],
        ),
    ),
]


def _database_comments() -> list[str]:
    clients = sum(p.max_scale * p.workers * p.pool for p in PLANS.values())
    return [
        f"max_connections {MAX_CONNECTIONS}: the pooler's {POOLER_INSTANCES} instances hold at most"
        f" {POOLER_INSTANCES * POOLER_SERVER_CONNECTIONS} server connections, the rest is headroom"
        " for replication, the migration and people.",
        f"Every function pod at max-scale holds at most {clients} client connections"
        f" (sum of max-scale x MEDIA_DB_POOL_MAX); twice that during a rollout, rounded up:"
        f" max_client_conn {client_connection_budget()}. Transaction mode: MEDIA_DB_POOLING=transaction.",
    ]


def generated() -> dict[Path, str]:
    """Every generated file, by path under infra/, with its content."""
    files: dict[Path, str] = {}
    for name, render in BASE_FILES:
        files[Path("k8s/base") / name] = render()
    files[Path("k8s/base/kustomization.yaml")] = _dump([kustomization_base()])
    files[Path("k8s/components/istio/kustomization.yaml")] = _dump(
        [istio_component()],
        ["Istio instead of a Gateway API implementation: the VirtualService, no HTTPRoutes."],
    )
    files[Path("k8s/components/istio/virtualservice.yaml")] = _dump([virtual_service()])
    for overlay in OVERLAYS:
        files[Path(f"k8s/overlays/{overlay.name}/kustomization.yaml")] = _dump(
            [kustomization_overlay(overlay)], [overlay.why]
        )
    files[Path("k8s/overlays/prod-istio/kustomization.yaml")] = _dump(
        [
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": ["../prod"],
                "components": ["../../components/istio"],
            }
        ],
        ["prod on a cluster whose Knative runs on Istio: one VirtualService instead of the HTTPRoutes."],
    )
    files[Path("k8s/overlays/s3/kustomization.yaml")] = _dump(
        [kustomization_s3()],
        [
            "prod with the CAS in an S3-compatible bucket: MEDIA_STORAGE=s3 and the bucket in the"
            " ConfigMap, no PVC, no volume in any pod. Move the blobs first (k8s/jobs/migrate-store,"
            " README: Storage)."
        ],
    )
    files[Path("k8s/jobs/migrate-store/kustomization.yaml")] = _dump([kustomization_migrate_store()])
    files[Path("k8s/jobs/migrate-store/job.yaml")] = _dump(
        [migrate_store_job()],
        [
            "Copies every referenced blob from the volume to the bucket while the functions serve;"
            " resumable, so a retried pod goes on where the last stopped. Re-run after the switch"
            " (delete the Job, apply again). Reverse: swap --from and --to."
        ],
    )
    files[Path("openfaas/stack.yml")] = _dump(
        [openfaas_stack()],
        [
            "OpenFaaS: the same functions, one image each (infra/Dockerfile). OpenFaaS cannot mount"
            " volumes, so the CAS lives in a bucket (MEDIA_STORAGE=s3). The secret media-secrets"
            " arrives as files, one per key, which MEDIA_SECRETS_DIR reads; its key aws-credentials"
            " is an AWS credentials file for the bucket (or give the pods a web identity instead)."
        ],
    )
    return files


def stale(root: Path = ROOT) -> list[Path]:
    """The generated files that differ from what is on disk (or are missing)."""
    return [
        path
        for path, text in generated().items()
        if not (root / path).is_file() or (root / path).read_text() != text
    ]


def main(argv: list[str]) -> int:
    check = "--check" in argv
    changed = stale()
    if check:
        for path in changed:
            print(f"stale: infra/{path} (run `make manifests`)", file=sys.stderr)
        return 1 if changed else 0
    for path, text in generated().items():
        target = ROOT / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    print(f"wrote {len(generated())} files under infra/ ({len(changed)} changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
