"""Retrying a call with exponential backoff while its service is briefly away: the one loop behind
the tracking server's retries (:func:`jepa_lab.track.store.call`) and the study storage's
(:func:`jepa_lab.study.storage.retrying`)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """How a service is retried and what is said about it (``name``: e.g. ``storage URL``)."""

    name: str
    limit: float  # seconds before giving up
    first: float  # first pause, doubled after every try ...
    longest: float  # ... up to this
    lost: str  # "connection lost", "did not answer"
    back: str  # "reconnected", "answered again"


def with_backoff(
    call: Callable[[], T],
    backoff: Backoff,
    transient: Callable[[Exception], BaseException | None],
    give_up: Callable[[BaseException, float], BaseException],
) -> T:
    """``call()``, retried while ``transient(error)`` names a cause worth waiting out; past
    ``backoff.limit`` seconds ``give_up(cause, waited)`` is raised from that cause. The first
    retry is announced on stderr, and so is the recovery, once each."""
    began, pause, tries = time.monotonic(), backoff.first, 0
    while True:
        try:
            result = call()
        except Exception as exc:
            cause = transient(exc)
            if cause is None:
                raise
            waited = time.monotonic() - began
            if waited >= backoff.limit:
                raise give_up(cause, waited) from cause
            if tries == 0:
                print(
                    f"warning: {backoff.name}: {backoff.lost}; retrying for up to "
                    f"{backoff.limit:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
            tries += 1
            time.sleep(min(pause, max(0.0, backoff.limit - waited)))
            pause = min(pause * 2, backoff.longest)
            continue
        if tries:
            print(
                f"{backoff.name}: {backoff.back} after {time.monotonic() - began:.1f} s "
                f"({tries} retries)",
                file=sys.stderr,
                flush=True,
            )
        return result
