"""A bounded hand-off of work to a thread of its own, in order: what lets an upload receive its
next chunk from the socket while the previous ones are hashed and written.

An upload's request thread used to do everything one after another: read the body through
gunicorn, parse the multipart, hash (SHA-256) and write (py-spy, 100 MiB uploads: reading and
parsing ~45 % of the thread's time, hashing and writing ~45 %). hashlib and the file's write both
release the GIL on large buffers, so a second thread doing those runs on the machine's other core
while the first receives.

Memory stays bounded: at most `depth` chunks wait, and the receiving thread blocks on the next one
until the lane catches up (which also pushes back on the client through TCP). The first failure
of the work (a full volume) is raised to the receiving thread at its next `put`, or at `close`;
the chunks after it are dropped, never worked on.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

DEPTH = 4  # chunks in flight: 4 MiB with gunicorn's 1 MiB reads


class Lane:
    """`work(chunk)` for every chunk `put`, in order, on one daemon thread."""

    def __init__(self, work: Callable[[bytes], None], depth: int = DEPTH, name: str = "media-lane") -> None:
        self._work = work
        self._queue: queue.Queue[bytes | None] = queue.Queue(depth)
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._work(chunk)
                except BaseException as exc:  # handed to the receiving thread, which decides
                    self._error = exc

    def put(self, chunk: bytes) -> None:
        """Queue `chunk` (waiting while `depth` chunks already wait); raise the work's failure."""
        self._raise()
        assert not self._closed, "put after close"
        self._queue.put(chunk)

    def close(self) -> None:
        """Wait until every chunk is worked on, then raise the work's failure if there was one."""
        self._stop()
        self._raise()

    def abandon(self) -> None:
        """Wait for the thread to finish (the chunks still queued are dropped), raising nothing."""
        self._error = self._error or _Abandoned()
        self._stop()

    def _stop(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
        self._thread.join()

    def _raise(self) -> None:
        if self._error is not None and not isinstance(self._error, _Abandoned):
            raise self._error


class _Abandoned(Exception):
    """Set as the error of an abandoned lane, so that its thread drops what is still queued."""
