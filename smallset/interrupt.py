"""Stopping a run when the user asks (SIGINT, SIGTERM): one process-wide flag.

The command line's signal handler raises KeyboardInterrupt in the main thread and sets :data:`STOP`;
work running in other threads (Prefect's task threads) calls :func:`check_stop` at its safe points (every
condensation iteration, every training batch, before a file is renamed into place) and stops there, so
an interrupted run writes nothing.
"""
from __future__ import annotations

import threading

STOP = threading.Event()


def request_stop() -> None:
    STOP.set()


def check_stop() -> None:
    """Raise KeyboardInterrupt when a stop was requested."""
    if STOP.is_set():
        raise KeyboardInterrupt("smallset: stop requested")
