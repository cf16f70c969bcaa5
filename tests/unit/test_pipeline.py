"""The lane that hashes and writes an upload's chunks on a thread of its own."""

from __future__ import annotations

import threading

import pytest

from common.pipeline import Lane


def test_the_work_is_done_in_order_and_all_of_it_before_close_returns() -> None:
    seen: list[bytes] = []
    lane = Lane(seen.append)
    chunks = [bytes([i]) * 10 for i in range(50)]
    for chunk in chunks:
        lane.put(chunk)
    lane.close()
    assert seen == chunks


def test_at_most_depth_chunks_wait_while_the_work_is_slow() -> None:
    release = threading.Event()
    started = threading.Event()

    def slow(chunk: bytes) -> None:
        started.set()
        release.wait(5)

    lane = Lane(slow, depth=2)
    lane.put(b"a")  # taken by the thread, which then blocks
    assert started.wait(5)
    lane.put(b"b")
    lane.put(b"c")  # the queue is full now
    blocked = threading.Thread(target=lane.put, args=(b"d",))
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive()  # the fourth waits: memory stays bounded
    release.set()
    blocked.join(5)
    assert not blocked.is_alive()
    lane.close()


def test_the_first_failure_reaches_the_receiving_thread_and_later_chunks_are_dropped() -> None:
    done: list[bytes] = []

    def work(chunk: bytes) -> None:
        if chunk == b"bad":
            raise OSError(28, "No space left on device")
        done.append(chunk)

    lane = Lane(work, depth=1)
    lane.put(b"ok")
    lane.put(b"bad")
    with pytest.raises(OSError, match="No space"):
        for _ in range(100):  # raised at a later put at the latest...
            lane.put(b"after")
    with pytest.raises(OSError, match="No space"):
        lane.close()  # ...and again at close
    assert done == [b"ok"]


def test_an_abandoned_lane_stops_working_and_raises_nothing() -> None:
    done: list[bytes] = []
    gate = threading.Event()

    def work(chunk: bytes) -> None:
        gate.wait(5)
        done.append(chunk)

    lane = Lane(work, depth=8)
    for chunk in (b"1", b"2", b"3"):
        lane.put(chunk)
    threading.Timer(0.1, gate.set).start()
    lane.abandon()
    assert done in ([b"1"], [])  # what the thread held when abandoned, at most
    lane.abandon()  # twice is harmless
