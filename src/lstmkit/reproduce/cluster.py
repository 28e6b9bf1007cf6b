"""Trial groups on a Ray cluster: ``lstmkit reproduce ... --ray ADDRESS`` (or ``--ray local``).

Each unit of work (a group of one cell's trials, :func:`lstmkit.reproduce.runner.run_group`)
becomes one Ray task of one CPU; the results come back in order, so ``results.json`` is what a
local run writes. Checkpoints are written by the tasks themselves, to the paths the run gives
them: on a cluster of several machines ``--out`` must be a folder every node sees (a shared
filesystem), and every node needs lstmkit installed in the same Python version. ``--resume``
then continues each trial from its checkpoint wherever its task lands.

Ray is optional (``pip install "lstmkit[ray]"``); without it, asking for a cluster raises a
``ValueError`` saying how to install it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ValueError('ray: not installed; install it with pip install "lstmkit[ray]"'
                         ) from None
    return ray


def cluster_cpus(address: str) -> int:
    """CPUs of the cluster at ``address`` (``"local"``: start one on this machine)."""
    ray = _ray()
    _connect(ray, address)
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _connect(ray: Any, address: str, cpus: int | None = None) -> None:
    if not isinstance(address, str) or not address:
        raise ValueError(f"ray: expected a cluster address or 'local', got {address!r}")
    if ray.is_initialized():
        return
    if address == "local":
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)


def run_on_ray(address: str, fn: Callable[..., Any], jobs: list[dict[str, Any]],
               cpus: int | None = None) -> list[Any]:
    """``[fn(**job) for job in jobs]`` as Ray tasks of one CPU each, in order.

    ``cpus`` bounds a local cluster's size. The first task to fail raises its error here; on
    any exception (Ctrl-C included) the tasks still running are cancelled.
    """
    ray = _ray()
    _connect(ray, address, cpus)
    remote = ray.remote(num_cpus=1, max_retries=0)(fn)
    refs = [remote.remote(**job) for job in jobs]
    try:
        return ray.get(refs)
    except BaseException as err:
        for ref in refs:
            ray.cancel(ref, force=True)
        cause = getattr(err, "cause", None)
        if isinstance(cause, Exception):  # a task's own error, unwrapped from Ray's
            raise cause from None
        raise


def shutdown() -> None:
    """Disconnect from (and stop a local) cluster, if connected."""
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        ray.shutdown()
