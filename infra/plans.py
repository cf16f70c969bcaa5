"""How each function is run and scaled on Kubernetes, and why: the figures `make bench` measured,
one `Plan` per function, the connection budget they add up to, and the overlays' variations.
`infra/manifests.py` renders them; README's Deploying section explains them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from common import routing

NAMESPACE = "media"
APP = "media"

# Measured by `make bench` on 2026-12-01 (bench/results/rehearsal.json; a 2-core machine, wrk on
# the same cores): what each plan below is derived from.
UPLOAD_CPU_SECONDS_PER_GIB = 4.2  # multipart, 1 GiB files (presigned PUT: 3.7)
DOWNLOAD_CPU_SECONDS_PER_GIB = 0.19  # whole files, sendfile (0.13 for 1 GiB)
DOWNLOAD_RPS_PER_PROCESS = 1078  # metadata GET at c=8, one process, no ingress: 0.93 CPU-ms each
RANGE_RPS_PER_PROCESS = 971  # 64 KiB range at c=8: 1.04 CPU-ms each
PROCESS_RSS_MIB = 63  # peak RSS of every function process during the 1 GiB transfers
COLD_START_SECONDS = 0.35  # process start to the first ready answer
# The slowest client uplink an upload of MEDIA_MAX_UPLOAD_BYTES must get through: 1 Mbit/s.
SLOWEST_UPLINK_BYTES_PER_SECOND = 125_000
MAX_UPLOAD_BYTES = 100 * 1024 * 1024  # MEDIA_MAX_UPLOAD_BYTES (the default)


@dataclass(frozen=True)
class Plan:
    """How one function is run and scaled, and why (the comment above its Knative Service)."""

    function: str
    threads: int  # MEDIA_THREADS = containerConcurrency
    pool: int  # MEDIA_DB_POOL_MAX
    min_scale: int
    max_scale: int
    target: int  # autoscaling.knative.dev/target: the soft concurrency per pod
    timeout_seconds: int
    response_start_timeout_seconds: int
    cpu: tuple[str, str]  # request, limit
    memory: tuple[str, str]
    why: str
    workers: int = 1  # MEDIA_WORKERS: one process per pod; Knative scales pods, not workers

    @property
    def name(self) -> str:
        return f"{APP}-{self.function}"

    @property
    def host(self) -> str:
        """The ksvc's cluster-local host, which Knative's internal gateway routes on."""
        return f"{self.name}.{NAMESPACE}.svc.cluster.local"


_UPLOAD_TIMEOUT = math.ceil(MAX_UPLOAD_BYTES / SLOWEST_UPLINK_BYTES_PER_SECOND / 300) * 300  # 900 s

_TUNED: tuple[Plan, ...] = (
    Plan(
        function="upload",
        threads=8,
        pool=4,
        min_scale=1,
        max_scale=30,
        target=6,
        timeout_seconds=_UPLOAD_TIMEOUT,
        response_start_timeout_seconds=_UPLOAD_TIMEOUT,
        cpu=("1000m", "2000m"),
        memory=("256Mi", "512Mi"),
        why=(
            f"An upload costs {UPLOAD_CPU_SECONDS_PER_GIB} CPU-seconds per GiB (hashing, type"
            " detection, the copy to the volume): one fast client takes a whole core (about"
            f" {round(1024 / UPLOAD_CPU_SECONDS_PER_GIB)} MiB/s), a phone at 2 MB/s about 1 % of"
            " one. containerConcurrency 8 (low) keeps 8 fast uploads from sharing less than a"
            " quarter of a core each, while slow ones cost little; target 6 (75 %) scales out"
            " before a pod is full. timeoutSeconds and responseStartTimeoutSeconds: the answer"
            f" starts only after the body, and {MAX_UPLOAD_BYTES // 2**20} MiB at 1 Mbit/s takes"
            f" about {MAX_UPLOAD_BYTES // SLOWEST_UPLINK_BYTES_PER_SECOND} s: {_UPLOAD_TIMEOUT} s"
            " (raise the cluster's max-revision-timeout-seconds to it). Memory: each process"
            f" peaked at {PROCESS_RSS_MIB} MiB RSS through 1 GiB uploads (streamed in 1 MiB"
            " blocks). The pool: each thread needs a connection only to check its rate limits"
            " and to commit, briefly. max-scale 30: README's capacity model (50 uploads/s of 4 MiB"
            " from 10 Mbit/s clients keep about 170 in flight)."
        ),
    ),
    Plan(
        function="download",
        threads=32,
        pool=8,
        min_scale=1,
        max_scale=40,
        target=24,
        timeout_seconds=_UPLOAD_TIMEOUT,
        response_start_timeout_seconds=30,
        cpu=("1000m", "2000m"),
        memory=("256Mi", "512Mi"),
        why=(
            f"One process answers about {DOWNLOAD_RPS_PER_PROCESS} metadata GETs/s and"
            f" {RANGE_RPS_PER_PROCESS} 64 KiB ranges/s with one core (about 1 CPU-ms each; the"
            " GIL keeps a process near one core), and streams whole files for"
            f" {DOWNLOAD_CPU_SECONDS_PER_GIB} CPU-seconds per GiB (sendfile). A request holds a"
            " thread for as long as the client reads, so concurrency is high (32) for slow"
            " readers, and target 24 (75 %); more threads stretch the tail of short requests under"
            " the GIL (p99 at 16 clients: 18 ms with 2 threads, 29 ms with 8, in the rehearsal),"
            " which costs less than slow readers blocking a pod. min-scale 1: the hot path never"
            " waits for a cold"
            " start. A thread holds a database connection only for the record lookup, so 8"
            " connections serve 32 threads. timeoutSeconds: the largest file to a slow reader."
            " max-scale 40: README's capacity model (2,000 downloads/s of 500 KiB to 10 Mbit/s"
            " clients keep about 800 in flight)."
        ),
    ),
    Plan(
        function="presign",
        threads=8,
        pool=2,
        min_scale=0,
        max_scale=5,
        target=6,
        timeout_seconds=30,
        response_start_timeout_seconds=10,
        cpu=("250m", "1000m"),
        memory=("128Mi", "256Mi"),
        why=(
            "A presign is a token check, a rate-limit update and one INSERT: about 1 CPU-ms, like"
            f" the metadata GET. Scale to zero is allowed (cold start {COLD_START_SECONDS} s for"
            " the process, plus the pod's)."
        ),
    ),
    Plan(
        function="health",
        threads=4,
        pool=2,
        min_scale=0,
        max_scale=2,
        target=3,
        timeout_seconds=10,
        response_start_timeout_seconds=10,
        cpu=("100m", "500m"),
        memory=("128Mi", "256Mi"),
        why=(
            "The public /health routes: one database ping and one write to the volume each."
            " Every function also answers its own probes on its own port; this one only serves"
            " what the ingress routes here, so it may scale to zero."
        ),
    ),
)


# bench/imaging.py (one core, the full variant set, each in the decoder's child process).
VARIANTS_SECONDS_12MP = 0.63  # a 12 MP JPEG (0.94 for a 12 MP PNG, which decodes whole)
DECODER_RSS_MIB = 226  # the child's peak for that PNG; 151 for a 24 MP JPEG

_TUNED += (
    Plan(
        function="process",
        threads=2,
        pool=2,
        min_scale=0,
        max_scale=10,
        target=1,
        timeout_seconds=150,
        response_start_timeout_seconds=150,
        cpu=("1000m", "2000m"),
        memory=("512Mi", "1536Mi"),
        why=(
            f"An image's whole variant set takes about {VARIANTS_SECONDS_12MP} s of one core for a"
            f" 12 MP photo, in a child process that peaked at {DECODER_RSS_MIB} MiB RSS and may use"
            " up to MEDIA_PROCESS_MEMORY_BYTES (1 GiB) of address space: containerConcurrency 2"
            " and target 1 scale out per image in flight, memory leaves room for two children."
            " Events are retried by the Broker and the drain runs every minute, so scale to zero"
            " costs only latency. timeoutSeconds: a drain works for up to 50 s, and its last"
            " image may take MEDIA_PROCESS_TIMEOUT_SECONDS (60 s) more."
        ),
    ),
)


def default_plan(function: str) -> Plan:
    """A function the plans do not know yet (a folder and its routes are all it takes to deploy
    one): small, scaled to zero when idle, until `make bench` gives it figures of its own."""
    return Plan(
        function=function,
        threads=4,
        pool=2,
        min_scale=0,
        max_scale=3,
        target=3,
        timeout_seconds=60,
        response_start_timeout_seconds=30,
        cpu=("250m", "1000m"),
        memory=("128Mi", "256Mi"),
        why="No plan of its own yet (infra/plans.py): the defaults, until make bench measures it.",
    )


def _plans() -> dict[str, Plan]:
    tuned = {plan.function: plan for plan in _TUNED}
    unknown = set(tuned) - set(routing.functions())
    if unknown:
        raise RuntimeError(f"plans for functions the routing table does not have: {sorted(unknown)}")
    return {name: tuned.get(name) or default_plan(name) for name in routing.functions()}


PLANS: dict[str, Plan] = _plans()  # every function of the routing table


# Server connections: the pooler's instances × default_pool_size, under max_connections (README).
POOLER_INSTANCES = 2
POOLER_SERVER_CONNECTIONS = 20  # default_pool_size, per pooler instance
MAX_CONNECTIONS = 100


def client_connection_budget() -> int:
    """Every pod at max-scale, twice (old and new revision during a rollout), per pooler instance
    (either instance may get them all), rounded up to a hundred."""
    clients = sum(p.max_scale * p.workers * p.pool for p in PLANS.values())
    return math.ceil(2 * clients / 100) * 100


@dataclass(frozen=True)
class Overlay:
    name: str
    registry: str
    tags: dict[str, str]  # function: image tag; bump one to redeploy that function alone
    storage_class: str
    scale: dict[str, tuple[int, int]]  # function: (min, max)
    resources: dict[str, tuple[tuple[str, str], tuple[str, str]]]  # function: (cpu, memory)
    database_instances: int
    why: str


OVERLAYS = (
    Overlay(
        name="dev",
        registry="registry.dev.example.com/recipes",
        tags=dict.fromkeys(PLANS, "dev"),
        storage_class="nfs-client",
        scale={name: (0, 2) for name in PLANS},
        resources={name: (("100m", "1000m"), ("128Mi", "512Mi")) for name in PLANS},
        database_instances=1,
        why="One small cluster: everything may scale to zero, at most two pods each, one database.",
    ),
    Overlay(
        name="prod",
        registry="registry.example.com/recipes",
        tags=dict.fromkeys(PLANS, "1.0.0"),
        storage_class="cephfs",
        scale={name: (p.min_scale, p.max_scale) for name, p in PLANS.items()},
        resources={name: (p.cpu, p.memory) for name, p in PLANS.items()},
        database_instances=3,
        why="The plans of infra/manifests.py as they are; pin the image tag of each release.",
    ),
)
