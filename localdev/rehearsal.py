"""`make up`: the production rehearsal on one machine.

Each function of the routing table runs as its own processes (`common.server`: gunicorn around
functions-framework) on loopback ports, as many as its `x-functions` entry says (two for `upload`:
two Knative replicas sharing one CAS volume and one database), and nginx is the ingress on one
port, its routes generated from the same table.
The end-to-end fault drills and `make bench` use `Rehearsal` directly.

`Rehearsal.redeploy(NAME)` replaces one function's processes the way a Knative revision rollout
does: the new processes start and are ready first, nginx is reloaded to route to them, the old ones
are drained (no connection left from the ingress) and only then stopped. A running `make up`
takes the command on a Unix socket (`<data dir>/rehearsal/control.sock`):
`make redeploy FUNCTION=download`, or `python -m localdev.rehearsal redeploy download`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common import routing
from common.config import Config
from common.migrate import migrate
from localdev import nginx
from localdev.harness import ROOT, children, free_port, http_status, spawn_until_ready
from localdev.pinger import Pinger


def default_scale() -> dict[str, int]:
    """Processes per function, from the routing table (`x-functions`; one unless it says more)."""
    return {name: routing.function_settings(name).rehearsal_processes for name in routing.functions()}


@dataclass
class FunctionProcess:
    """One deployed function: `python -m common.server --target NAME` on its own port."""

    name: str
    env: dict[str, str]
    log_dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    cold_start_seconds: float | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> FunctionProcess:
        cmd = [
            sys.executable,
            *("-m", "common.server"),
            *("--target", self.name, "--source", str(ROOT / "functions" / self.name / "main.py")),
            *("--host", "127.0.0.1", "--port", str(self.port)),
        ]
        log = self.log_dir / f"{self.name}-{self.port}.log"
        # Its own process group, so that a drill can kill -9 gunicorn's master and workers at once.
        self.proc, self.cold_start_seconds = spawn_until_ready(
            cmd, self.env, log, self.base + "/health/ready", timeout, new_session=True
        )
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def kill9(self) -> None:
        """What a node failure does: SIGKILL to the whole process group, no cleanup."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)

    def pids(self) -> list[int]:
        """gunicorn's master and its workers."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        return [self.proc.pid, *children(self.proc.pid)]


START_ATTEMPTS = 3


@dataclass
class Nginx:
    prefix: Path
    port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def peer_base(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self, upstreams: dict[str, list[int]], cas_root: Path) -> Nginx:
        """Start nginx on its two ports. They were free when picked, seconds earlier; a port taken
        since then (an outgoing connection's ephemeral port, say) makes nginx exit, and it is
        started again on two new ones, up to `START_ATTEMPTS` times."""
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi", "dav", "dav-tmp"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        conf = self.prefix / "nginx.conf"
        error_log = self.prefix / "error.log"
        attempt = 0
        while True:
            attempt += 1
            peer = nginx.peer_server(self.prefix, self.peer_port, cas_root)
            conf.write_text(nginx.ingress_config(self.prefix, self.port, upstreams, peer))
            logged = error_log.stat().st_size if error_log.exists() else 0
            self.proc = subprocess.Popen(
                [binary, "-p", str(self.prefix), "-c", str(conf), "-e", str(error_log)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
            if self._ready(within=10):
                return self
            errors = error_log.read_text()[logged:] if error_log.exists() else ""
            port_taken = self.proc.poll() is not None and "Address already in use" in errors
            if not port_taken or attempt == START_ATTEMPTS:
                self.proc.kill()
                self.proc.wait(5)
                raise RuntimeError(f"nginx did not start: {errors[-2000:]}")
            self.port, self.peer_port = free_port(), free_port()

    def _ready(self, within: float) -> bool:
        """Whether nginx answers within `within` seconds (False at once if it exited)."""
        assert self.proc is not None
        deadline = time.monotonic() + within
        while http_status(self.base + "/health/live") != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def reload(self, upstreams: dict[str, list[int]], cas_root: Path, timeout: float = 10) -> None:
        """New configuration, gracefully (`nginx -s reload`): new workers route with it; the old
        ones finish the requests they have, then exit. Returns once a new worker runs."""
        assert self.proc is not None
        conf = self.prefix / "nginx.conf"
        peer = nginx.peer_server(self.prefix, self.peer_port, cas_root)
        conf.write_text(nginx.ingress_config(self.prefix, self.port, upstreams, peer))
        before = set(children(self.proc.pid))
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while not set(children(self.proc.pid)) - before:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not reload: {(self.prefix / 'error.log').read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class Rehearsal:
    data_dir: Path
    env: dict[str, str]  # MEDIA_DATABASE_URL, the secrets, limits...
    scale: dict[str, int] = field(default_factory=default_scale)
    processes: dict[str, list[FunctionProcess]] = field(default_factory=dict)
    nginx: Nginx | None = None
    pinger: Pinger | None = None

    @property
    def base(self) -> str:
        assert self.nginx is not None
        return self.nginx.base

    @property
    def cas_root(self) -> Path:
        return self.data_dir / "cas"

    def function_env(self) -> dict[str, str]:
        assert self.nginx is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIA_")}
        env.update(
            {
                "MEDIA_DATA_DIR": str(self.data_dir),
                "MEDIA_PUBLIC_BASE_URL": self.nginx.base,
                "MEDIA_WORKERS": "1",
                "MEDIA_TRUSTED_PROXY_HOPS": "1",  # nginx appends the client to X-Forwarded-For
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.env)
        return env

    def start(self) -> Rehearsal:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        logs = self.data_dir / "logs"
        logs.mkdir(exist_ok=True)
        self.nginx = Nginx(prefix=self.data_dir / "nginx")
        config = Config.from_env(self.function_env())
        migrate(config.require_database_url())
        env = self.function_env()
        planned = {
            name: [
                FunctionProcess(
                    name,
                    {**env, "MEDIA_THREADS": str(routing.function_settings(name).rehearsal_threads)},
                    logs,
                )
                for _ in range(count)
            ]
            for name, count in self.scale.items()
        }
        events = self.events_url(planned)
        if events and "K_SINK" not in self.env:
            # The outbox's events straight to the process function, as a Knative Trigger sends them.
            for procs in planned.values():
                for p in procs:
                    p.env["K_SINK"] = events
        for name, procs in planned.items():
            self.processes[name] = [p.start() for p in procs]
        self.nginx.start(self.upstreams(), self.cas_root)
        if events:  # and a drain every few seconds, as a PingSource
            self.pinger = Pinger(lambda: self.events_url(self.processes), config.local_drain_seconds).start()
        return self

    @staticmethod
    def events_url(processes: dict[str, list[FunctionProcess]]) -> str | None:
        """Where the internal events route is served (the process function's own port), if it runs."""
        route = routing.events_route()
        procs = processes.get(route.function, []) if route else []
        return procs[0].base + route.path if route and procs else None

    def upstreams(self) -> dict[str, list[int]]:
        return {name: [p.port for p in procs] for name, procs in self.processes.items()}

    def redeploy(
        self, name: str, drain_timeout: float = 900, say: Callable[[str], None] = lambda line: None
    ) -> list[FunctionProcess]:
        """One function's processes replaced, as a Knative revision rollout replaces its pods:
        start the new ones and wait until they are ready, switch nginx to them, wait until the
        old ones have no connection left from the ingress (a large upload may take minutes;
        `drain_timeout` bounds it), then stop them. The other functions are not touched."""
        assert self.nginx is not None
        if name not in self.processes:
            raise ValueError(f"no function {name!r} (functions: {', '.join(sorted(self.processes))})")
        old = self.processes[name]
        new = [FunctionProcess(name, dict(p.env), p.log_dir).start() for p in old]
        say(f"{name}: new processes ready on ports {[p.port for p in new]}")
        self.processes[name] = new
        self.nginx.reload(self.upstreams(), self.cas_root)
        say(f"{name}: nginx routes to the new processes")
        ports = [p.port for p in old]
        deadline = time.monotonic() + drain_timeout
        while (busy := established(ports)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if busy:
            say(f"{name}: still {busy} connection(s) after {drain_timeout:.0f} s; stopping anyway")
        for p in old:
            p.stop()
        say(f"{name}: old processes on ports {ports} drained and stopped")
        return new

    def stop(self) -> None:
        if self.pinger is not None:
            self.pinger.stop()
        if self.nginx is not None:
            self.nginx.stop()
        for procs in self.processes.values():
            for p in procs:
                p.stop()

    def restart(self, process: FunctionProcess) -> FunctionProcess:
        """Start a stopped or killed process again on the same port (nginx keeps routing to it)."""
        process.stop()
        return process.start()

    def temp_files(self) -> list[Path]:
        tmp = self.cas_root / "tmp"
        return sorted(tmp.iterdir()) if tmp.exists() else []

    def blobs(self) -> list[Path]:
        root = self.cas_root / "sha256"
        return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def established(ports: list[int]) -> int:
    """TCP connections established to these loopback ports (the server side), from /proc."""
    wanted = {f"{port:04X}" for port in ports}
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "01" and fields[1].rsplit(":", 1)[1] in wanted:
                    count += 1
    return count


def control_socket(data_dir: Path) -> Path:
    return data_dir / "control.sock"


def serve_control(rehearsal: Rehearsal, path: Path) -> socket.socket:
    """Take `redeploy NAME` commands on a Unix socket, one at a time; answer progress lines and
    then `ok` or `error: ...`. Closing the returned socket stops it."""
    path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    lock = threading.Lock()

    def handle(conn: socket.socket) -> None:
        with conn, conn.makefile("rw", encoding="utf-8") as stream:
            conn.settimeout(10)
            words = stream.readline().split()

            def say(line: str) -> None:
                print(line, flush=True)  # in make up's terminal too
                stream.write(line + "\n")
                stream.flush()

            if len(words) != 2 or words[0] != "redeploy":
                say("error: the command is `redeploy FUNCTION`")
                return
            conn.settimeout(None)
            try:
                with lock:
                    rehearsal.redeploy(words[1], say=say)
            except (ValueError, RuntimeError) as exc:
                say(f"error: {exc}")
                return
            say("ok")

    def loop() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return  # closed: make up is stopping
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, name="rehearsal-control", daemon=True).start()
    return server


def redeploy_command(name: str, timeout: float = 1000) -> int:
    """`make redeploy FUNCTION=name`: ask the running `make up` to redeploy one function."""
    data_dir = Config.from_env(os.environ).data_dir / "rehearsal"
    path = control_socket(data_dir)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError:
            print(f"no running `make up` answers on {path}", file=sys.stderr)
            return 2
        with sock.makefile("rw", encoding="utf-8") as stream:
            stream.write(f"redeploy {name}\n")
            stream.flush()
            last = ""
            for line in stream:
                last = line.strip()
                print(last, flush=True)
    return 0 if last == "ok" else 1


def main(argv: list[str] | None = None) -> int:
    """`make up`: the rehearsal with the embedded PostgreSQL (or MEDIA_DATABASE_URL) until Ctrl-C;
    `redeploy NAME`: ask the running one to redeploy a function."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["redeploy"]:
        if len(args) != 2:
            print("usage: python -m localdev.rehearsal redeploy FUNCTION", file=sys.stderr)
            return 2
        return redeploy_command(args[1])
    from localdev.__main__ import prepare

    config, server, _ = prepare()
    env = {k: v for k, v in os.environ.items() if k.startswith("MEDIA_") and k != "MEDIA_DATA_DIR"}
    rehearsal = Rehearsal(data_dir=config.data_dir / "rehearsal", env=env)
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    control = None
    try:
        rehearsal.start()
        control = serve_control(rehearsal, control_socket(rehearsal.data_dir))
        print(f"ingress (nginx) on {rehearsal.base}")
        for name, procs in rehearsal.processes.items():
            for p in procs:
                print(
                    f"  {name:<9} {p.base}  pid {p.proc.pid if p.proc else '?'}"
                    f"  cold start {p.cold_start_seconds or 0:.2f} s"
                )
        print("`make redeploy FUNCTION=name` redeploys one function; Ctrl-C stops everything.", flush=True)
        while not stop:
            time.sleep(0.5)
    finally:
        if control is not None:
            control.close()
            control_socket(rehearsal.data_dir).unlink(missing_ok=True)
        rehearsal.stop()
        if server is not None:
            server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
