"""``edgeport serve --engine ray``: the same endpoints (OIP v2, the text route, OpenAI for
causal LMs, health, metrics, auth) as a Ray Serve deployment, on a local cluster started
here or an existing one (``--address``).  edgeport builds no cluster of its own.

Each replica builds edgeport's own app (it holds ONNX Runtime sessions, which cannot be
pickled, so it is built late, in the replica) and runs the artifact's golden check before
it takes traffic.  Dynamic batching is Ray Serve's (``@serve.batch``); autoscaling is Ray
Serve's, on ongoing requests.  A deployment that does not come up is deleted, and a
cluster started here is shut down: nothing is left half-started.  Every response says
which replica answered (``x-edgeport-replica``: its process id).

Measured here (Ray 2.60, 2 cores): a local cluster starts in 4-9 s and takes ~0.7 GiB; a
killed replica is noticed within the health-check period and back in 2-3 s with a 1 s
period; requests in flight on it get 500 and are safe to retry (inference is idempotent).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import signal
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from ..errors import InvalidOptionError, ServerError, StoppedByUser, require
from . import ServeOptions, check_model_name, default_model_name

APP = "edgeport"
DEPLOY_TIMEOUT_S = 180.0
ADDRESS_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ClusterOptions:
    replicas: int | None = None             # a fixed number; or min/max for autoscaling
    min_replicas: int | None = None
    max_replicas: int | None = None
    address: str | None = None              # an existing cluster (GCS host:port or ray://host:port)
    cpus_per_replica: float | None = None   # default: 1, or what fits when there are more replicas than CPUs
    target_ongoing_requests: float = 8.0    # autoscaling: requests in flight per replica it aims at
    health_check_period_s: float = 2.0
    deploy_timeout_s: float = DEPLOY_TIMEOUT_S

    def check(self) -> None:
        fixed, scaled = self.replicas is not None, (self.min_replicas, self.max_replicas) != (None, None)
        if fixed and scaled:
            raise InvalidOptionError("give --replicas N, or --min-replicas and --max-replicas (autoscaling), not both")
        for option, value in (("--replicas", self.replicas), ("--min-replicas", self.min_replicas),
                              ("--max-replicas", self.max_replicas)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise InvalidOptionError(f"{option} must be a whole number >= 1 (got {value!r})")
        if scaled and (self.min_replicas is None or self.max_replicas is None or self.min_replicas > self.max_replicas):
            raise InvalidOptionError("autoscaling needs --min-replicas <= --max-replicas, both given")
        if self.cpus_per_replica is not None and not 0 < self.cpus_per_replica <= 256:
            raise InvalidOptionError(f"--cpus-per-replica must be > 0 and at most 256 (got {self.cpus_per_replica:g})")

    @property
    def most_replicas(self) -> int:
        return self.max_replicas or self.replicas or 1


def replica_cpus(options: ClusterOptions, cluster_cpus: float) -> float:
    """CPUs each replica reserves: as asked, else 1, or an equal share when more replicas
    than CPUs are asked for; refused when the cluster cannot hold them all."""
    wanted = options.cpus_per_replica or min(1.0, cluster_cpus / options.most_replicas)
    if wanted * options.most_replicas > cluster_cpus + 1e-9:
        raise InvalidOptionError(f"{options.most_replicas} replicas of {wanted:g} CPU do not fit the cluster's "
                                 f"{cluster_cpus:g} CPUs; ask for fewer replicas or a smaller --cpus-per-replica")
    return wanted


# ------------------------------------------------------------------ inside a replica

class RayBatcher:
    """Ray Serve's own dynamic batching (``@serve.batch``) behind the batcher interface of
    edgeport's app: requests whose feeds have the same shape run as one batch."""

    def __init__(self, run, max_batch: int, max_delay_s: float, max_queue: int, on_batch):
        from ray import serve

        self.run, self.on_batch, self.depth = run, on_batch, 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgeport-infer")

        @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=max_delay_s)
        async def batched(requests: list[dict]) -> list[dict]:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._run_groups, requests)

        self._batched = batched

    def _run_groups(self, requests: list[dict]) -> list[dict]:
        groups: dict[tuple, list[int]] = {}
        for index, feeds in enumerate(requests):
            signature = tuple((k, v.dtype.str, v.shape[1:]) for k, v in sorted(feeds.items()))
            groups.setdefault(signature, []).append(index)
        answers: list[dict] = [{}] * len(requests)
        for indices in groups.values():
            start = time.perf_counter()
            outputs = self.run({k: np.concatenate([requests[i][k] for i in indices]) for k in requests[indices[0]]})
            rows = [len(next(iter(requests[i].values()))) for i in indices]
            self.on_batch(len(indices), sum(rows), time.perf_counter() - start)
            offset = 0
            for index, count in zip(indices, rows):
                answers[index] = {k: v[offset:offset + count] for k, v in outputs.items()}
                offset += count
        return answers

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self._executor.shutdown(wait=True)

    async def submit(self, feeds: dict, admitted: bool = False) -> dict:
        return await self._batched(feeds)     # Ray Serve bounds its own queue (max_ongoing_requests)


class ReplicaHeader:
    """ASGI middleware: every response names the replica's process (``x-edgeport-replica``)."""

    def __init__(self, app):
        self.app, self.pid = app, str(os.getpid()).encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_replica(message):
            if message["type"] == "http.response.start":
                message = dict(message, headers=[*message.get("headers", []), (b"x-edgeport-replica", self.pid)])
            await send(message)

        return await self.app(scope, receive, send_with_replica)


def deployment_class():
    """The Serve deployment (defined here, so that importing this module needs no Ray)."""
    from ray import serve

    @serve.ingress()                        # the app is built in each replica: __serve_build_asgi_app__
    class EdgeportReplica:
        def __init__(self, path: str, options: ServeOptions):
            from . import make_app

            self.edgeport_app, self.name, _ = make_app(path, options, batcher=RayBatcher)   # golden check included
            # Each replica counts its own requests: its series carry its process, as its responses do.
            self.edgeport_app.server.metrics.replica = str(os.getpid())

        def __serve_build_asgi_app__(self):
            return ReplicaHeader(self.edgeport_app)

    return EdgeportReplica


# ------------------------------------------------------------------ the driver

def _reachable(address: str) -> tuple[str, int]:
    try:
        parsed = urlparse(address if "://" in address else f"gcs://{address}")
        host, port = parsed.hostname, parsed.port or (10001 if parsed.scheme == "ray" else 6379)
    except ValueError as exc:              # a port past 65535, an unclosed IPv6 bracket
        raise InvalidOptionError(f"--address '{address}' must look like HOST:PORT or ray://HOST:PORT ({exc})") \
            from None
    if not host:
        raise InvalidOptionError(f"--address '{address}' must look like HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, port), timeout=ADDRESS_TIMEOUT_S).close()
    except OSError as exc:
        raise ServerError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); start it with 'ray "
                          "start --head', or leave out --address to start a local one") from exc
    return host, port


def ray_environment(address: str | None) -> None:
    """What Ray reads from the environment when it is imported, so set before that: bounded
    connection attempts (Ray otherwise retries an unreachable address for minutes) and, for
    a cluster of our own, its own auth token (nothing written to ~/.ray)."""
    # RAY_DISABLE_FAILURE_SIGNAL_HANDLER: Ray's core worker would otherwise take SIGTERM over
    # while ray.init runs (a stack dump, abort, a cluster folder left behind).
    for key, value in (("RAY_NUM_REDIS_GET_RETRIES", "2"), ("RAY_py_gcs_connect_timeout_s", "10"),
                       ("RAY_CLIENT_INITIAL_CONNECTION_TIMEOUT_S", "10"), ("RAY_USAGE_STATS_ENABLED", "0"),
                       ("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")):
        os.environ.setdefault(key, value)
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))


class Cluster:
    """A connection to Ray: a local cluster started (and shut down) here, or an existing one."""

    def __init__(self, address: str | None):
        self.address, self.temp_dir = address, None

    def start(self):
        ray = require("ray", "ray")
        logging.getLogger("ray").setLevel(logging.WARNING)
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        if self.address:
            _reachable(self.address)
            try:
                ray.init(address=self.address, logging_level="WARNING", log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ServerError(f"cannot join the Ray cluster at {self.address}: {str(exc).splitlines()[0]} (a "
                                  "cluster with token auth needs RAY_AUTH_MODE=token and its RAY_AUTH_TOKEN)") from exc
            return ray
        self.temp_dir = tempfile.mkdtemp(prefix="edgeport-ray-")     # short: Ray's socket paths must fit
        try:
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, _temp_dir=self.temp_dir,
                     object_store_memory=96 << 20, log_to_driver=False, logging_level="WARNING")
        except (RuntimeError, ConnectionError, OSError) as exc:
            raise ServerError(f"a local Ray cluster could not start: {str(exc).splitlines()[0]}") from exc
        return ray

    def abandon(self) -> None:
        """Forget a cluster whose processes are gone: remove our folder; no call to Ray, which
        would wait for its GCS (then at exit too, so its exit hook is unregistered)."""
        import atexit

        import ray

        atexit.unregister(ray._private.worker.shutdown)
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def stop(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def _deploy(serve, app, timeout_s: float) -> None:
    """Deploy and wait until every replica is running, or fail (with the replicas' own error)
    and delete what was started."""
    start = time.perf_counter()
    serve.run_many([serve.RunTarget(app, name=APP, route_prefix="/")], wait_for_applications_running=False)
    while True:
        status = serve.status().applications.get(APP)
        state = status.status.value if status else "MISSING"
        if state == "RUNNING":
            return
        if state in ("DEPLOY_FAILED", "UNHEALTHY") or time.perf_counter() - start > timeout_s:
            messages = [d.message.strip().splitlines()[-1] for d in (status.deployments.values() if status else [])
                        if d.message and d.message.strip()]
            serve.delete(APP)
            why = messages[0] if messages else f"not running after {timeout_s:.0f} s"
            raise ServerError(f"the Ray Serve deployment did not start: {why}")
        time.sleep(0.25)


def serve_on_ray(path, options: ServeOptions, cluster_options: ClusterOptions, warn=print) -> None:
    """Serve ``path`` on Ray Serve until interrupted; leave nothing running behind."""
    from . import _check_port_free, serving_notes, startup_warnings
    from ..runtime.model import open_artifact, rows_depend_on_batch

    options.check()
    cluster_options.check()
    if options.port == 0:
        raise InvalidOptionError("--port 0 lets the system pick a port, which Ray Serve's proxy does not report; "
                                 "give the port to serve on")
    token = options.token()
    if cluster_options.address is None:
        replica_cpus(cluster_options, float(os.cpu_count() or 1))     # refused before a cluster is started
    ray_environment(cluster_options.address)
    require("ray", "ray")
    path = str(Path(path).resolve())
    artifact = open_artifact(path, trusted_key=options.trusted_key)   # checksums and signature, before any cluster
    name = check_model_name(options.name or default_model_name(path))
    if cluster_options.address is None:
        # a cluster's own proxy holds its port (here too, when the cluster runs on this host, and
        # again on the next run): serve.start is where a taken address shows
        _check_port_free(options.host, options.port)
    cluster = Cluster(cluster_options.address)
    # While Ray starts, a SIGTERM is noted, not raised: raised inside ray.init it would leave a
    # half-started node that nothing shuts down.  Once init returns, it stops the server.
    noted: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: noted.append(signum))
    try:
        try:
            ray = cluster.start()
        except SystemExit as exc:            # ray.init's own SIGTERM handler: sys.exit(15)
            if exc.code != signal.SIGTERM:
                raise
            raise _Terminated() from None
        # Where Ray's core worker installed its own fatal-signal handler for SIGTERM anyway (a
        # stack dump, then abort, leaving its agents running): ours again, so SIGTERM tears down.
        signal.signal(signal.SIGTERM, _terminate)
        if noted:
            raise _Terminated()
        from ray import serve
        from ray.serve.schema import LoggingConfig

        cpus = replica_cpus(cluster_options, float(ray.cluster_resources().get("CPU", 0)))
        # Replicas get the token itself (they may not see the token file) and threads for their CPUs.
        replica_options = replace(options, name=name, auth_token=token, auth_token_file=None,
                                  threads=options.threads or max(1, round(cpus)))
        serve.start(http_options={"host": options.host, "port": options.port},
                    logging_config=LoggingConfig(log_level="WARNING", enable_access_log=False))
        _check_proxy_address(options)
        scaling = ({"autoscaling_config": {"min_replicas": cluster_options.min_replicas,
                                           "max_replicas": cluster_options.max_replicas,
                                           "target_ongoing_requests": cluster_options.target_ongoing_requests}}
                   if cluster_options.min_replicas else {"num_replicas": cluster_options.replicas or 1})
        deployment = serve.deployment(deployment_class(), ray_actor_options={"num_cpus": cpus},
                                      max_ongoing_requests=max(64, 2 * (options.max_batch or 1)),
                                      max_queued_requests=options.max_queue, max_constructor_retry_count=1,
                                      health_check_period_s=cluster_options.health_check_period_s,
                                      health_check_timeout_s=max(2.0, cluster_options.health_check_period_s),
                                      **scaling)
        _deploy(serve, deployment.bind(path, replica_options), cluster_options.deploy_timeout_s)
        for message in startup_warnings(options, token) + serving_notes(rows_depend_on_batch(artifact), options):
            warn(message)
        where = cluster_options.address or "a local Ray cluster"
        warn(f"serving '{name}' on http://{options.host}:{options.port} with Ray Serve on {where}: "
             + (f"{cluster_options.min_replicas}-{cluster_options.max_replicas} replicas (autoscaling)"
                if cluster_options.min_replicas else
                f"{cluster_options.replicas or 1} replica{'s' if (cluster_options.replicas or 1) > 1 else ''}")
             + f" of {cpus:g} CPU")
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        raise StoppedByUser("stopped by Ctrl-C; the Ray Serve deployment was deleted") from None
    except _Terminated:
        return                                               # SIGTERM: a clean stop, exit 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        _tear_down(cluster)


def _check_proxy_address(options: ServeOptions) -> None:
    """Where Serve already ran on a cluster (--address), its proxy keeps its first HTTP address
    and Ray only logs that ours is ignored: the URL printed was one nothing listened on."""
    from ray.serve.context import _get_global_client

    config = _get_global_client().http_config
    if (config.host, config.port) != (options.host, options.port):
        raise ServerError(f"Ray Serve already runs on this cluster with its HTTP proxy on {config.host}:{config.port}, "
                          "which it keeps for every application; serve with --host "
                          f"{config.host} --port {config.port}, or stop the cluster's Serve first (serve shutdown)")


class _Terminated(Exception):
    pass


def _terminate(signum, frame) -> None:
    raise _Terminated()


def _gcs_reachable() -> bool:
    """Whether the cluster's GCS still answers.  A SIGTERM sent to the whole process group
    (``timeout``, ``kill -- -PGID``) also stops the local cluster's own processes; talking
    to them then waits 60 s for a GCS that is gone, and aborts."""
    import ray

    try:
        host, _, port = ray._private.worker.global_worker.node.gcs_address.rpartition(":")
        socket.create_connection((host, int(port)), timeout=1.0).close()
    except (AttributeError, ValueError):
        return True                    # no address to probe: try as usual
    except OSError:
        return False
    return True


def _tear_down(cluster: Cluster) -> None:
    import ray

    if ray.is_initialized() and not _gcs_reachable():
        cluster.abandon()              # its processes are gone already: nothing to delete or shut down
        return
    try:
        # A cluster started here goes as a whole (with the deployment); on the user's cluster
        # our deployment is deleted and the cluster left running.
        if ray.is_initialized() and cluster.address:
            from ray import serve

            try:
                serve.delete(APP)
            except Exception:          # the app may never have been created; deleting is best effort
                pass
    finally:
        if cluster.address is None:
            cluster.stop()             # a cluster started here goes with the server
        else:
            ray.shutdown()             # leave the user's cluster running, without our deployment
