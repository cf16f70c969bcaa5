"""What a Knative PingSource does for the process function, under `make run` and `make up`: every
few seconds, a `media.process.drain` CloudEvent POSTed to its `/events`, so work whose event was
lost is still done (README, Image processing). A daemon thread; each POST has a deadline."""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable

from common.events import DRAIN_EVENT
from common.processing import DRAIN_SECONDS

log = logging.getLogger("localdev.pinger")


class Pinger:
    def __init__(self, url: Callable[[], str | None], every_seconds: float) -> None:
        self._url = url  # asked each time: a redeployed process function has a new port
        self._every = every_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drain-pinger", daemon=True)

    def start(self) -> Pinger:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            url = self._url()
            if url:
                ping(url)


def ping(url: str) -> int | None:
    """One drain event; the status, or None when nothing answered in time."""
    request = urllib.request.Request(  # noqa: S310 - loopback, our own function
        url,
        data=b"{}",
        method="POST",
        headers={
            "ce-specversion": "1.0",
            "ce-id": f"ping-{uuid.uuid4()}",
            "ce-source": "/localdev/pinger",
            "ce-type": DRAIN_EVENT,
            "content-type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=DRAIN_SECONDS + 10) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        log.warning("the drain answered %s", exc.code)
        return exc.code
    except OSError as exc:
        log.debug("the drain did not answer (%s)", exc)
        return None
