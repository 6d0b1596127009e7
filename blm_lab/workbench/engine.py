"""Where a sweep's points run: one after another in this process, or as tasks on a Dask cluster.

An engine runs ``fn(task, where)`` for every task and returns, in the tasks' order, what each call
returned, or an ``Outcome`` marked failed. ``where`` says which worker ran it (``worker``, ``host``,
``threads``, ``gpu``); the environment that ``where`` describes (``OMP_NUM_THREADS``,
``CUDA_VISIBLE_DEVICES``) is set in the worker before ``fn`` starts, so a Jupyter kernel that ``fn``
starts inherits it.

- ``Sequential()``: the default; ``fn`` runs here, in order.
- ``Dask.local(workers)``: a ``distributed.LocalCluster`` of worker processes, one task each at a time:
  with GPUs, one worker per GPU (``CUDA_VISIBLE_DEVICES`` set to its GPU); on CPU the cores divided
  between the workers (``OMP_NUM_THREADS`` set to each one's share).
- ``Dask.connect(address)``: an existing cluster (``dask-scheduler``, ``dask_jobqueue.SLURMCluster``);
  its workers keep the environment they were started with.

A task whose worker dies is submitted once more (the scheduler picks a live worker); a second death
marks it failed. ``fn`` itself reports the project's errors (a failing notebook) in what it returns;
an engine only adds the failures it sees: a worker that died twice.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from ..errors import BlmError, ConfigError

CONNECT_TIMEOUT_S = 10.0  # how long --scheduler ADDRESS may take to answer
WORKER_DEATHS = 2  # a task whose worker dies is run once more; the second death fails it


@dataclass
class Outcome:
    """A task the engine could not finish: its worker died ``WORKER_DEATHS`` times."""

    error: str
    where: dict


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (empty without CUDA)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


def worker_environments(workers: int, gpus: Sequence[str], cores: int) -> dict[str, dict[str, str]]:
    """Each local worker's environment, by worker name: its GPU, or its share of the CPU cores.

    More workers than GPUs: one worker per GPU, with a warning that names both numbers.
    """
    if workers < 1:
        raise ConfigError(f"--workers {workers}: give at least 1 worker")
    if gpus:
        if workers > len(gpus):
            print(f"warning: --workers {workers} but {len(gpus)} GPU{'s' if len(gpus) > 1 else ''}; "
                  f"running one worker per GPU ({len(gpus)} workers)", file=sys.stderr)
        return {str(i): {"CUDA_VISIBLE_DEVICES": gpu} for i, gpu in enumerate(gpus[:workers])}
    threads = max(1, cores // workers)
    return {str(i): {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                     "NUMBA_NUM_THREADS": str(threads)} for i in range(workers)}


def _where(worker: str, env: dict[str, str]) -> dict:
    return {"worker": worker, "host": socket.gethostname(),
            "threads": int(env["OMP_NUM_THREADS"]) if "OMP_NUM_THREADS" in env else None,
            "gpu": env.get("CUDA_VISIBLE_DEVICES")}


class Sequential:
    """Every task in this process, one after another (the default engine)."""

    description = "sequential (this process)"
    dashboard = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def check_shared(self, path) -> None:
        """This process wrote the directory: nothing to check."""

    def map(self, fn: Callable, tasks: Sequence, names: Sequence[str] | None = None) -> list:
        where = _where("local", {})
        return [fn(task, where) for task in tasks]


def _run_on_worker(fn: Callable, task, environments: dict):
    """On a Dask worker: set this worker's environment, then run the task (one at a time per worker)."""
    from distributed import get_worker

    name = str(get_worker().name)
    env = environments.get(name, {})
    os.environ.update(env)
    # Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536 (good for the worker's own memory);
    # a notebook kernel that inherits it hands torch's freed activations back to the OS at every step and
    # faults them in again: training a CPU point took 2.2x as long, 40% of it in the kernel (bench_sweep)
    os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    return fn(task, _where(name, env))


def _probe(path: str, token: str) -> str:
    """On a Dask worker: '' when ``path`` holds the client's ``token`` file and takes a new file, else why not."""
    from pathlib import Path

    folder = Path(path)
    if not (folder / token).is_file():
        return f"it does not see {path} as the client does (no {token} there)"
    mine = folder / f"{token}.{socket.gethostname()}.{os.getpid()}"
    try:
        mine.write_text("ok")
        mine.unlink()
    except OSError as exc:
        return f"it cannot write there ({exc.strerror or exc})"
    return ""


class Dask:
    """Tasks on a Dask cluster: a local one this engine starts (``local``) or one that runs already (``connect``)."""

    def __init__(self, client, cluster=None, environments: dict | None = None, description: str = ""):
        self.client, self.cluster, self.environments = client, cluster, environments or {}
        self.description = description
        self.dashboard = client.dashboard_link

    @classmethod
    def local(cls, workers: int, gpus: Sequence[str] | None = None) -> "Dask":
        """A LocalCluster of ``workers`` processes (see ``worker_environments``); a task each at a time."""
        import dask
        from distributed import Client, LocalCluster

        gpus = visible_gpus() if gpus is None else list(gpus)
        environments = worker_environments(workers, gpus, _cpu_count())
        # the scheduler runs in this process: a task whose worker dies comes back to map() at once,
        # which runs it once more itself (the same rule for a cluster that is not ours); and a worker holds
        # only the task it runs, so that its death takes no waiting task with it
        with dask.config.set({"distributed.scheduler.allowed-failures": 0,
                              "distributed.scheduler.worker-saturation": 1.0}):
            cluster = LocalCluster(n_workers=len(environments), threads_per_worker=1, processes=True,
                                   dashboard_address=":0", memory_limit=0, silence_logs=40)
        what = (f"{len(environments)} local workers, one GPU each" if gpus else
                f"{len(environments)} local workers, {next(iter(environments.values()))['OMP_NUM_THREADS']} "
                f"thread(s) each")
        return cls(Client(cluster, set_as_default=False), cluster, environments, what)

    @classmethod
    def connect(cls, address: str, timeout: float | None = None) -> "Dask":
        """The cluster whose scheduler is at ``address``; one ``BlmError`` line when it does not answer."""
        from distributed import Client

        timeout = timeout or CONNECT_TIMEOUT_S
        try:
            client = Client(address, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise BlmError(f"the Dask scheduler at {address!r} did not answer within {timeout:g} s ({reason}); "
                           "check the address (tcp://HOST:8786) and that the scheduler runs") from None
        workers = len(client.scheduler_info(n_workers=-1)["workers"])
        return cls(client, None, {}, f"the Dask cluster at {address} ({workers} workers now)")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        return False

    def check_shared(self, path) -> None:
        """Every worker sees ``path`` as this process does and can write there; else an error naming them."""
        import uuid
        from pathlib import Path

        token = f".shared-check-{uuid.uuid4().hex}"
        marker = Path(path) / token
        marker.write_text("the client wrote this; every worker must see it")
        try:
            answers = self.client.run(_probe, str(path), token)
        finally:
            marker.unlink(missing_ok=True)
        bad = {worker: why for worker, why in answers.items() if why}
        if bad:
            worker, why = next(iter(bad.items()))
            raise BlmError(f"the run directory {path} is not shared with {len(bad)} of {len(answers)} workers "
                           f"(worker {worker}: {why}); give --run-dir a path on a file system every worker "
                           "mounts, with the same path on each")

    def map(self, fn: Callable, tasks: Sequence, names: Sequence[str] | None = None) -> list:
        """Run ``fn`` on every task on the cluster; a task whose worker dies runs once more, then fails."""
        from distributed import as_completed
        from distributed.client import FutureCancelledError
        from distributed.scheduler import KilledWorker

        names = list(names or range(len(tasks)))
        results: list = [None] * len(tasks)
        deaths = [0] * len(tasks)
        index = {}
        # results are fetched as soon as a task ends: a finished point's result that stayed on a worker
        # which then died would make the scheduler run that point again
        finished = as_completed(loop=self.client.loop, with_results=True, raise_errors=False)

        def submit(i):
            future = self.client.submit(_run_on_worker, fn, tasks[i], self.environments, pure=False,
                                        key=f"point-{names[i]}-{deaths[i]}-{time.time_ns()}")
            index[future.key] = i
            finished.add(future)

        for i in range(len(tasks)):
            submit(i)
        for future, result in finished:  # a resubmitted task joins the iteration
            i = index.pop(future.key)
            if future.status == "finished":
                results[i] = result
                future.release()
                continue
            try:
                future.result()  # raises what ended it; anything but a worker's death is a bug, with its traceback
            except (KilledWorker, FutureCancelledError) as exc:
                deaths[i] += 1
                if deaths[i] < WORKER_DEATHS:
                    submit(i)
                else:
                    results[i] = Outcome(f"its worker died {deaths[i]} times ({type(exc).__name__})",
                                         {"worker": None, "host": None, "threads": None, "gpu": None})
            future.release()
        return results
