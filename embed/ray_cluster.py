"""Starting or joining the Ray cluster the engine runs on, and sizing its actor pool.

Joining checks first that the address answers (`check_answers`): Ray's own join retries for
about ten minutes, with the bundle's lock held, before it says anything. Ray is imported only
inside functions here and in `embed.ray_engine`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from embed.environment import VERBOSE_ENV, cpu_cores
from embed.errors import EngineError

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "embed-dogs[ray]" (or pip install "ray[data]>=2.40")'
# Default actor size. Measured on 2 cores (benchmarks/ray_scaling.py, 1800 photos): two
# 1-core actors embed faster than one 2-core actor (and than the local engine), at the cost of
# a model per core in memory (peak RSS per worker is in the manifest).
CORES_PER_WORKER = 1
JOIN_TIMEOUT_S = 5.0  # a cluster's address must answer within this (Ray itself retries ~10 min)
JOIN_HINT = "start one with `ray start --head`, or leave out --ray-address for a local one"


def import_ray() -> Any:
    """The `ray` module with Ray Data, or an EngineError that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise EngineError(f"--engine ray needs Ray, which is not installed: {INSTALL_HINT}"
                          ) from None
    return ray


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def split_endpoint(address: str) -> tuple[str, int] | None:
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def cluster_endpoint(address: str) -> tuple[str, int] | None:
    """The host and port joining `address` connects to, as Ray resolves it ("auto":
    RAY_ADDRESS, else the last `ray start`; localhost: this node's address); ray://HOST:PORT
    as given; None when it cannot be told (then Ray's own join decides)."""
    if address.startswith("ray://"):
        return split_endpoint(address)
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # another Ray version: read the address as it is
        return None if address == "auto" else split_endpoint(address)
    try:
        return split_endpoint(canonicalize_bootstrap_address(address) or "")
    except ConnectionError as exc:  # "auto", and no cluster known on this machine
        raise EngineError(f"could not join a Ray cluster at {address} ({first_line(exc)});"
                          f" {JOIN_HINT}") from None
    except Exception:  # not an address Ray reads: ray.init says why, at once
        return None


def gcs_answers(endpoint: tuple[str, int], timeout: float) -> bool:
    """Whether a Ray GCS at `endpoint` answers a first request within `timeout` seconds (any
    answer counts, a refusal too: ray.init then reports it). Ray's client retries for
    minutes, so it runs in a daemon thread that is left behind when it does not return."""
    from ray._raylet import GcsClient

    done = threading.Event()

    def ask() -> None:
        with suppress(Exception):
            GcsClient(address=f"{endpoint[0]}:{endpoint[1]}").cluster_id  # noqa: B018
        done.set()

    threading.Thread(target=ask, name="ray-join-check", daemon=True).start()
    return done.wait(timeout)


def check_answers(address: str, timeout: float | None = None) -> None:
    """Refuse, within `timeout` seconds (default JOIN_TIMEOUT_S) each, an address where
    nothing accepts a connection or where no Ray GCS answers: Ray itself would retry for
    about ten minutes (holding the bundle's lock) before saying so."""
    endpoint = cluster_endpoint(address)
    if endpoint is None:
        return
    timeout = JOIN_TIMEOUT_S if timeout is None else timeout
    try:
        with socket.create_connection(endpoint, timeout=timeout):
            pass
    except OSError as exc:
        why = (f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError)
               else (exc.strerror or first_line(exc)).lower())
        raise EngineError(f"could not join a Ray cluster at {address}: nothing answers there"
                          f" ({why}); {JOIN_HINT}") from None
    if not address.startswith("ray://") and not gcs_answers(endpoint, timeout):
        raise EngineError(f"could not join a Ray cluster at {address}: something accepts"
                          f" connections there, but no Ray cluster answers within {timeout:g}"
                          f" s; {JOIN_HINT}")


@dataclass(frozen=True)
class RayOptions:
    """Where to run: `address` None starts a local cluster on this machine's usable cores;
    "auto" or "HOST:PORT" joins a running one. `workers` actors (None: one per
    CORES_PER_WORKER cores of the cluster)."""

    address: str | None = None
    workers: int | None = None


@dataclass(frozen=True)
class Cluster:
    address: str  # as asked: "local", "auto" or HOST:PORT
    gcs_address: str | None  # the cluster's own address, as Ray reports it
    nodes: int
    cpus: int
    workers: int
    cpus_per_worker: float
    threads: int  # LiteRT and decode threads per actor
    inherited_env: tuple[tuple[str, str], ...] = ()  # what a local cluster's workers inherit


def pool_size(cpus: int, workers: int | None) -> tuple[int, float, int]:
    """(actors, CPUs per actor, threads per actor) on a cluster of `cpus` CPUs."""
    workers = workers or max(1, cpus // CORES_PER_WORKER)
    share = cpus // workers if workers <= cpus else cpus / workers
    return workers, share, max(1, int(share))


def local_threads(options: RayOptions) -> int:
    """The threads per actor a local cluster started for `options` will give (known before
    it starts, so its workers can inherit the environment that says them)."""
    return pool_size(cpu_cores(), options.workers)[2]


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """`env` set in this process for the block, then restored: the Ray processes started
    inside it (raylet, and through it every worker) inherit it; the driver keeps its own."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def start_or_join(options: RayOptions, worker_env: dict[str, str] | None = None
                  ) -> tuple[Cluster, bool]:
    """Start or join the cluster `options` names, and size the actor pool; True when this
    call started the Ray session (its owner shuts it down). A session already initialised in
    this process is used as it is.

    A local cluster started here is started with `worker_env` in its environment, so its
    workers - the idle ones Ray prestarts too - have it without a per-actor `runtime_env`:
    an actor with a runtime_env of its own cannot use a prestarted worker and waits for Ray
    to spawn one (issue 21: ~0.6 s of a ~3.5 s actor start on 2 cores)."""
    ray = import_ray()
    address = options.address
    started = False
    inherited: tuple[tuple[str, str], ...] = ()
    verbose = bool(os.environ.get(VERBOSE_ENV))
    if not verbose:  # Ray Data's INFO lines and notices; errors still show
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    if not ray.is_initialized():
        log.info("starting a local Ray cluster" if address is None
                 else f"joining the Ray cluster at {address}")
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "logging_level": logging.INFO if verbose else logging.ERROR,
            "log_to_driver": verbose,
        }
        if address is not None:
            check_answers(address)  # seconds, not Ray's ten minutes of retries
        try:
            if address is None:  # "local": a new cluster, even where `ray start` runs one
                with environment(worker_env or {}):
                    ray.init(address="local", num_cpus=cpu_cores(), **kwargs)
                inherited = tuple(sorted((worker_env or {}).items()))
            else:
                ray.init(address=address, **kwargs)
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError
            where = "start a local Ray cluster" if address is None else (
                f"join a Ray cluster at {address}")
            raise EngineError(f"could not {where} ({first_line(exc)}); {JOIN_HINT}"
                              ) from None
        started = True
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    workers, share, threads = pool_size(cpus, options.workers)
    gcs = getattr(ray.get_runtime_context(), "gcs_address", None)
    cluster = Cluster(address or "local", gcs, nodes, cpus, workers, share, threads, inherited)
    return cluster, started

