"""The driver of ``finecut refine-dataset``: start (or join) Ray and refine items on Ray Data.

The items go to Ray Data as an Arrow table cut into blocks; an actor pool of ``workers``
:class:`~finecut.cluster.work.RefineBatch` instances (one refiner loaded per worker, ``threads``
CPUs each) refines them, and the driver collects one status row per item as they finish. Ray is
imported here, when called, never by ``import finecut``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from finecut.cluster.items import Item
from finecut.cluster.work import RESULT_COLUMNS, RefineBatch, RefineOptions
from finecut.errors import ConfigError, DependencyError, FinecutError

__all__ = ["RayConfig", "require_ray", "run_on_ray"]

log = logging.getLogger(__name__)

#: The one line a user without Ray gets.
MISSING_RAY = "refine-dataset needs Ray: pip install 'finecut[ray]'"


@dataclass(frozen=True)
class RayConfig:
    """Where and how wide the job runs.

    Args:
        workers: refiners running at once (Ray actors), each with its own model.
        address: an existing cluster (``auto``, ``ray://host:10001``, ``host:6379``); None
            starts a local Ray with ``workers * threads`` CPUs for the job and stops it after.
        batch_size: items per call of a worker (bigger: less scheduling, coarser progress).
        threads: CPUs (and torch threads) per worker.
        object_store_mb: object store of a local Ray (the items are only URLs: small).
    """

    workers: int = 2
    address: str | None = None
    batch_size: int = 4
    threads: int = 1
    object_store_mb: int = 256

    def __post_init__(self) -> None:
        for name in ("workers", "batch_size", "threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1; got {getattr(self, name)}")


def require_ray():
    """The ``ray`` module with Ray Data, or DependencyError with how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray without its [data] extra lacks pyarrow, pandas
    except ImportError:
        raise DependencyError(MISSING_RAY) from None
    return ray


def run_on_ray(
    items: list[Item],
    options: RefineOptions,
    config: RayConfig,
    progress: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Refine ``items`` on Ray Data: one row per item, the columns of ``RESULT_COLUMNS``.

    Args:
        items: what to refine (outputs are written by the workers).
        options: how each worker refines (its ``threads`` is replaced by ``config.threads``).
        config: where and how wide.
        progress: called with the number of items each time some finish.

    Raises:
        DependencyError: Ray is not installed.
        ConfigError: no Ray cluster at ``config.address``.
        FinecutError: the workers could not start (e.g. a weights file they cannot read).
    """
    ray = require_ray()
    import pyarrow as pa

    if not items:
        return {name: np.array([]) for name in RESULT_COLUMNS}
    started = _start(ray, config)
    ray_data_log = logging.getLogger("ray.data")
    level = ray_data_log.level
    if not logging.getLogger("finecut").isEnabledFor(logging.DEBUG):
        # its per-run lines and internal stack traces are not the user's (-v shows them); a
        # failure still ends in one line (_job_error)
        ray_data_log.setLevel(logging.CRITICAL)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the CLI shows its own bar
        ctx.print_on_execution_start = False
        table = pa.table({c: [getattr(i, c) for i in items] for c in ("image", "mask", "output")})
        # enough blocks for every worker to get several (balance), few enough for millions
        rows = max(config.batch_size, math.ceil(len(items) / (config.workers * 8)))
        blocks = [table.slice(s, rows) for s in range(0, len(items), rows)]
        kwargs = {**options.to_dict(), "threads": config.threads}
        ds = ray.data.from_arrow(blocks).map_batches(
            RefineBatch,
            fn_constructor_kwargs=kwargs,
            compute=ray.data.ActorPoolStrategy(size=min(config.workers, len(blocks))),
            batch_size=config.batch_size,
            batch_format="numpy",
            num_cpus=config.threads,
            num_gpus=1 if str(options.device or "").startswith("cuda") else None,
        )
        out: dict[str, list[np.ndarray]] = {name: [] for name in RESULT_COLUMNS}
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for name in RESULT_COLUMNS:
                    out[name].append(batch[name])
                if progress is not None:
                    progress(len(batch["ok"]))
        except Exception as exc:  # a worker that could not start: its reason, in one line
            raise _job_error(exc) from None
        return {name: np.concatenate(parts) for name, parts in out.items()}
    finally:
        ray_data_log.setLevel(level)
        if started:
            ray.shutdown()


def _start(ray, config: RayConfig) -> bool:
    """Start or join Ray unless this process already has; True if this call started it."""
    if ray.is_initialized():
        return False
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
    try:
        if config.address:
            ray.init(address=config.address, **quiet)
        else:
            ray.init(
                num_cpus=config.workers * config.threads,
                include_dashboard=False,
                object_store_memory=config.object_store_mb * 1024 * 1024,
                **quiet,
            )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"at {config.address!r}" if config.address else "locally"
        raise ConfigError(f"cannot start Ray {where}: {_one_line(exc)}") from None
    return True


def _job_error(exc: BaseException) -> FinecutError:
    """The FinecutError a worker raised (e.g. WeightsError from its constructor), or one line."""
    seen = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, FinecutError):
            return cause
        cause = getattr(cause, "cause", None) or cause.__cause__ or cause.__context__
    return FinecutError(f"the Ray job failed: {_one_line(exc)}")


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
