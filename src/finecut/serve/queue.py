"""The bounded work queue: admission at arrival, a fixed pool of worker threads, progress.

A request is admitted when it arrives, before its body is read, if fewer than
``workers + capacity`` requests are admitted (uploading, waiting or running); otherwise it is
refused at once (:class:`QueueFull`, answered 503 with Retry-After). An admitted request keeps
its slot until its work has finished in a worker thread, even if its client has gone, so at
most ``workers`` computations run and at most ``workers + capacity`` bodies are held in memory.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["QueueFull", "Ticket", "WorkQueue"]

T = TypeVar("T")

Report = Callable[[str, float | None], None]
"""``report(step, fraction)``: what a job is doing now, and how far it is (None: unknown)."""


class QueueFull(Exception):
    """Every slot is taken; ``retry_after`` is a guess of the seconds until one frees."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the server is busy; retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass
class Ticket:
    """One admitted request: its slot, state and progress."""

    job_id: str | None
    arrived: float
    order: int
    state: str = "uploading"  # uploading -> queued -> running -> done
    step: str = ""
    fraction: float | None = None
    started: float | None = None
    submitted: bool = False
    released: bool = field(default=False, repr=False)

    def report(self, step: str, fraction: float | None = None) -> None:
        self.step = step
        self.fraction = fraction


class WorkQueue:
    """Admits at most ``workers + capacity`` requests and runs their work on ``workers`` threads.

    Args:
        workers: worker threads (computations at once).
        capacity: requests that may wait beyond those running.
    """

    def __init__(self, workers: int, capacity: int) -> None:
        self.workers = workers
        self.capacity = capacity
        self._lock = threading.Lock()
        self._tickets: list[Ticket] = []
        self._order = 0
        self._mean_s = 2.0  # running mean of job durations, for Retry-After
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="finecut-serve")
        self.served = 0
        self.refused = 0

    # -- admission -----------------------------------------------------------------------------
    def admit(self, job_id: str | None = None) -> Ticket:
        """Take a slot or raise :class:`QueueFull`."""
        with self._lock:
            if len(self._tickets) >= self.workers + self.capacity:
                self.refused += 1
                waits = len(self._tickets) / self.workers
                raise QueueFull(max(1, math.ceil(self._mean_s * waits)))
            if job_id is not None and any(t.job_id == job_id for t in self._tickets):
                job_id = None  # a reused id: progress is reported for the first one only
            self._order += 1
            ticket = Ticket(job_id, time.monotonic(), self._order)
            self._tickets.append(ticket)
            return ticket

    def release(self, ticket: Ticket) -> None:
        """Free the slot (idempotent). A submitted ticket is released when its work ends."""
        with self._lock:
            if ticket.released:
                return
            ticket.released = True
            ticket.state = "done"
            self._tickets.remove(ticket)

    # -- work ----------------------------------------------------------------------------------
    async def run(self, ticket: Ticket, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args, report=ticket.report)`` on a worker thread and await its result.

        The ticket's slot is released when ``fn`` ends, not when the awaiting request ends.
        """
        ticket.state = "queued"
        ticket.submitted = True

        def work() -> T:
            ticket.state = "running"
            ticket.started = time.monotonic()
            try:
                return fn(*args, report=ticket.report)
            finally:
                seconds = time.monotonic() - ticket.started
                with self._lock:
                    self._mean_s = 0.8 * self._mean_s + 0.2 * seconds
                    self.served += 1
                self.release(ticket)

        try:
            future = self._executor.submit(work)
        except RuntimeError:  # shut down
            self.release(ticket)
            raise
        # a job cancelled before it started (server stopping) frees its slot here
        future.add_done_callback(lambda f: self.release(ticket) if f.cancelled() else None)
        return await asyncio.wrap_future(future)

    # -- reporting -----------------------------------------------------------------------------
    def progress(self, job_id: str) -> dict[str, Any] | None:
        """The state of the admitted request with ``job_id``, or None when there is none."""
        with self._lock:
            for ticket in self._tickets:
                if ticket.job_id == job_id:
                    ahead = sum(
                        1 for t in self._tickets if t.state == "queued" and t.order < ticket.order
                    )
                    now = time.monotonic()
                    return {
                        "state": ticket.state,
                        "step": ticket.step,
                        "fraction": ticket.fraction,
                        "ahead": ahead if ticket.state == "queued" else 0,
                        "elapsed_s": round(now - ticket.arrived, 2),
                    }
        return None

    def stats(self) -> dict[str, int]:
        """Counts for /healthz."""
        with self._lock:
            states = [t.state for t in self._tickets]
        return {
            "workers": self.workers,
            "capacity": self.capacity,
            "running": states.count("running"),
            "queued": states.count("queued"),
            "uploading": states.count("uploading"),
            "served": self.served,
            "refused": self.refused,
        }

    def shutdown(self) -> None:
        """Cancel the waiting work; running work ends on its own."""
        self._executor.shutdown(wait=False, cancel_futures=True)
