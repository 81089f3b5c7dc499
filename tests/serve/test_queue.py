"""The bounded queue: admission, 503 + Retry-After when full, slots freed when work ends."""

from __future__ import annotations

import asyncio
import threading

import pytest

from finecut.serve.queue import QueueFull, WorkQueue


def test_admission_is_bounded_and_released():
    queue = WorkQueue(workers=1, capacity=2)
    tickets = [queue.admit(f"job{i}") for i in range(3)]
    with pytest.raises(QueueFull) as full:
        queue.admit()
    assert full.value.retry_after >= 1
    assert queue.stats()["refused"] == 1 and queue.stats()["uploading"] == 3
    queue.release(tickets[0])
    queue.release(tickets[0])  # idempotent
    assert queue.admit() is not None
    assert queue.progress("job1")["state"] == "uploading"
    assert queue.progress("job0") is None
    queue.shutdown()


def test_work_runs_in_order_and_reports_progress():
    queue = WorkQueue(workers=1, capacity=3)
    gate = threading.Event()
    seen = []

    def work(name, report):
        report(f"step of {name}", 0.5)
        if name == "a":
            assert gate.wait(10)
        seen.append(name)
        return name.upper()

    async def main():
        ta, tb = queue.admit("a"), queue.admit("b")
        fa = asyncio.ensure_future(queue.run(ta, work, "a"))
        fb = asyncio.ensure_future(queue.run(tb, work, "b"))
        for _ in range(100):
            await asyncio.sleep(0.02)
            if queue.progress("a")["state"] == "running":
                break
        pa, pb = queue.progress("a"), queue.progress("b")
        assert pa["state"] == "running" and pa["step"] == "step of a" and pa["fraction"] == 0.5
        assert pb["state"] == "queued" and pb["ahead"] == 0
        gate.set()
        return await fa, await fb

    assert asyncio.run(main()) == ("A", "B")
    assert seen == ["a", "b"]
    stats = queue.stats()
    assert stats["served"] == 2 and stats["running"] == stats["queued"] == 0
    queue.shutdown()


def test_a_failing_job_frees_its_slot():
    queue = WorkQueue(workers=1, capacity=0)

    def boom(report):
        raise ValueError("bad")

    async def main():
        with pytest.raises(ValueError):
            await queue.run(queue.admit(), boom)

    asyncio.run(main())
    assert queue.admit() is not None  # the only slot is free again
    queue.shutdown()


def test_full_queue_answers_503_with_retry_after(photo_png, mask_png, monkeypatch):
    """workers=1, queue=0: while one refinement runs, the next request is refused at once."""
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    from finecut.serve import ServeConfig, create_app, jobs
    from finecut.serve.jobs import Result

    gate = threading.Event()

    def slow(*args, report, **kwargs):
        report("waiting for the test", None)
        assert gate.wait(10)
        return Result(b"png", "image/png", "x.png", (1, 1))

    monkeypatch.setattr(jobs, "refine_job", slow)
    app = create_app(ServeConfig(workers=1, queue=0, preload=False))
    files = {"image": ("a.png", photo_png), "mask": ("m.png", mask_png)}

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            first = asyncio.ensure_future(
                c.post("/api/refine", files=files, headers={"X-Finecut-Job": "first"})
            )
            for _ in range(200):
                await asyncio.sleep(0.02)
                p = await c.get("/api/progress/first")
                if p.status_code == 200 and p.json()["state"] == "running":
                    break
            assert p.json()["step"] == "waiting for the test"
            second = await c.post("/api/refine", files=files)
            gate.set()
            return await first, second

    first, second = asyncio.run(main())
    assert first.status_code == 200 and first.content == b"png"
    assert second.status_code == 503
    assert int(second.headers["retry-after"]) >= 1
    assert "busy" in second.json()["error"]
