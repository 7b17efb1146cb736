"""Prefect as the command line needs it: quiet about bad input, and no server left behind.

- :func:`quiet_smallset_errors`: a :class:`~smallset.errors.SmallsetError` raised in a task or flow is bad
  input, which the command line reports as one sentence; Prefect would first log it with its whole
  traceback (task failed, flow failed, final state). This filter drops those records from the console
  (the Prefect API and UI still get them). ``smallset --debug`` or ``SMALLSET_DEBUG=1`` keeps them.
- :func:`guard_ephemeral_server`: without ``PREFECT_API_URL`` Prefect 3.8.8 starts a temporary server as a
  subprocess (``SubprocessASGIServer``: ``python -m uvicorn --factory prefect.server.api.server:create_app``)
  and stops it at exit with ``atexit``, which never runs when the process is killed (SIGKILL) and comes
  too late on SIGTERM. We start it through :func:`create_app` instead, which starts a thread in the
  server that ends the server as soon as its parent process is gone (the parent id changes when a process
  is re-parented), and in a session of its own, so that Ctrl-C in a terminal reaches smallset, which stops
  the run and then the server, rather than killing the server under a running flow.
  :func:`stop_ephemeral_servers` stops it at once (the signal path of the command line).
- :func:`stop_threads_on_sigterm`: Prefect's own SIGTERM handler (active during a flow run) also sets
  smallset's stop flag, so the task threads stop before the flow waits for them.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time

PREFECT_FACTORY = "prefect.server.api.server:create_app"
GUARDED_FACTORY = "smallset.tasks.prefect_guard:create_app"


# --- the server side ---------------------------------------------------------------------------------------
def _watch_parent(parent: int, interval: float = 0.5) -> None:
    while True:
        time.sleep(interval)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down on SIGTERM
            time.sleep(10)
            os._exit(1)


def create_app():
    """Prefect's server app, in a process that ends when the process that started it is gone."""
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True, name="smallset-parent-watch").start()
    from prefect.server.api.server import create_app as prefect_create_app

    return prefect_create_app()


# --- the client side ---------------------------------------------------------------------------------------
def guard_ephemeral_server() -> None:
    """Make Prefect start its temporary server through :func:`create_app`, in its own session (idempotent;
    nothing to do with a configured server, ``PREFECT_API_URL``). :mod:`smallset.tasks.prefect_tasks` calls
    it on import, so the temporary server a Dask worker process starts for itself is guarded too."""
    import subprocess

    if os.environ.get("PREFECT_API_URL"):
        return
    from prefect.server.api import server

    cls = server.SubprocessASGIServer
    if getattr(cls, "_smallset_guarded", False):
        return
    original = cls._run_uvicorn_command
    real_popen = subprocess.Popen

    class GuardedPopen(real_popen):  # only the server's command line is changed
        def __init__(self, args, *a, **kw):
            if isinstance(args, (list, tuple)) and PREFECT_FACTORY in args:
                args = [GUARDED_FACTORY if x == PREFECT_FACTORY else x for x in args]
                kw.setdefault("start_new_session", True)
            super().__init__(args, *a, **kw)

    def run_uvicorn_command(self):
        saved = server.subprocess.Popen
        server.subprocess.Popen = GuardedPopen
        try:
            return original(self)
        finally:
            server.subprocess.Popen = saved

    cls._run_uvicorn_command = run_uvicorn_command
    cls._smallset_guarded = True


def stop_ephemeral_servers() -> None:
    """Stop every temporary server this process started (no-op when Prefect never started one)."""
    import sys

    mod = sys.modules.get("prefect.server.api.server")
    if mod is None:
        return
    handlers = sys.modules.get("prefect.logging.handlers")
    if handlers is not None:  # send what is queued while the server still answers, then stay quiet
        try:
            handlers.APILogWorker.drain_all(timeout=3)
        except Exception:  # noqa: BLE001
            pass
    logging.raiseExceptions = False  # Prefect's log worker prints "Error logging to API" when it is gone
    for srv in list(getattr(mod.SubprocessASGIServer, "_instances", {}).values()):
        try:
            srv.stop()
        except Exception:  # noqa: BLE001 - shutting down: best effort
            pass


# --- logging ----------------------------------------------------------------------------------------------
def debug_enabled() -> bool:
    return os.environ.get("SMALLSET_DEBUG", "").lower() in ("1", "true", "yes")


def _is_quiet(exc: BaseException | None) -> bool:
    from smallset.errors import SmallsetError

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (SmallsetError, KeyboardInterrupt)):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


class HideBadInput(logging.Filter):
    """Drops Prefect's records about a SmallsetError (or a stop by signal) unless debugging."""

    # the failure itself, a stop by signal, and the downstream tasks that then never ran (noise either way)
    MARKERS = ("SmallsetError", "KeyboardInterrupt", "aborted by an interrupt signal",
               "aborted by a termination signal", "did not reach a 'COMPLETED' state")

    def filter(self, record: logging.LogRecord) -> bool:
        if debug_enabled():
            return True
        if record.exc_info and _is_quiet(record.exc_info[1]):
            return False
        if record.levelno >= logging.ERROR and record.name.startswith("prefect"):
            try:
                text = record.getMessage()
            except Exception:  # noqa: BLE001
                return True
            return not any(m in text for m in self.MARKERS)
        return True


_FILTER = HideBadInput()


def quiet_smallset_errors() -> None:
    """Attach :class:`HideBadInput` to every console handler Prefect configured (idempotent)."""
    import prefect.main  # noqa: F401  (Prefect configures its logging when this is first imported)

    loggers = [logging.getLogger()] + [lg for name, lg in logging.Logger.manager.loggerDict.items()
                                       if isinstance(lg, logging.Logger) and name.split(".")[0] in ("prefect",
                                                                                                    "distributed")]
    for lg in loggers:
        for h in lg.handlers:
            if isinstance(h, logging.StreamHandler) and _FILTER not in h.filters:
                h.addFilter(_FILTER)


def stop_threads_on_sigterm() -> None:
    """During a flow run Prefect replaces the SIGTERM handler with its own, which raises in the main thread;
    the flow then joins its task threads before the signal reaches smallset's handler. Chain ours in front,
    so the task threads learn at once that they must stop (:mod:`smallset.interrupt`). Idempotent."""
    import prefect.utilities.engine as engine

    original = getattr(engine, "_prefect_sigterm_handler", None)
    if original is None or getattr(original, "_smallset", False):
        return

    def handler(signum, frame):
        from smallset.interrupt import request_stop

        request_stop()
        return original(signum, frame)

    handler._smallset = True
    engine._prefect_sigterm_handler = handler


def prepare_prefect() -> None:
    """Everything above, before a flow runs in this process."""
    guard_ephemeral_server()
    stop_threads_on_sigterm()
    quiet_smallset_errors()
