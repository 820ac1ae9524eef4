"""The worker loop: take one job at a time from the master, run it, report.

The main thread runs handlers.  A heartbeat thread with its own channel tells
the master the process is alive and receives cancel requests while the main
thread is busy: if a C call holds the GIL or the process is stopped, the
heartbeats stop and the master's watchdog acts.  Either channel closing means
the master is gone, and the worker exits at once.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import random
import signal
import sys
import threading
import traceback
from typing import Any

import msgpack

from supervisord.wire import worker as msgs
from worker.capture import Capture, CaptureHandler
from worker.channel import Channel, ChannelBroken, pack
from worker.context import JobContext
from worker.errors import Interrupt, JobFailure
from worker.softtimer import SoftTimer

log = logging.getLogger("jobsup.worker")


def _interrupt(signum: int, frame: Any) -> None:
    raise Interrupt(f"stopped by signal {signal.Signals(signum).name}")


def resolve(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


class Runtime:
    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.wid = spec["wid"]
        jobs_fd, control_fd = spec["channels"]
        self.chan = Channel.from_fd(jobs_fd)
        self.control = Channel.from_fd(control_fd)
        self.send_lock = threading.Lock()
        self.handlers: dict[str, Any] = {}
        self.schemas: dict[str, Any] = {}
        self.later: dict[str, tuple[str, str | None]] = {}  # type -> paths, not yet imported
        self.state: Any = None
        self.current: JobContext | None = None
        self.capture: Capture | None = None
        self.soft = SoftTimer()

    def send(self, msg: bytes) -> None:
        """Send an encoded message (``wire.worker.encode``) to the master."""
        main = threading.current_thread() is threading.main_thread()
        with self.send_lock:  # handlers may report progress from their own threads
            if main:
                self.soft.sending = True
            try:
                self.chan.send_bytes(msg)
            finally:
                if main:
                    self.soft.sending = False

    # -- start-up ---------------------------------------------------------
    def load(self) -> None:
        """Import every handler of the pool and run ``init``; failures end the worker."""
        for job_type, path in self.spec["handlers"].items():
            self.handlers[job_type] = resolve(path)
        for job_type, path in (self.spec.get("schemas") or {}).items():
            self.schemas[job_type] = resolve(path)
        if self.spec.get("init"):
            self.state = resolve(self.spec["init"])()

    # -- heartbeats and cancels ---------------------------------------------
    def heartbeat(self) -> None:
        interval = float(self.spec.get("heartbeat_interval", 1.0))
        master = self.spec.get("master_pid")
        self.control.sock.settimeout(interval)
        while True:
            if master and os.getppid() != master:
                os._exit(70)
            try:
                self.control.send(("hb",))
                frames = self.control.recv()
            except TimeoutError:
                continue
            except (ChannelBroken, OSError):
                os._exit(70)  # the master is gone: nobody will take a result
            for frame in frames:
                msg = msgs.decode_to_worker(frame)
                current = self.current
                if (isinstance(msg, msgs.Cancel) and current is not None
                        and current.token == msg.token):
                    current._cancel.set()

    # -- job types added by a reload -----------------------------------------
    def add_types(self, msg: msgs.Handlers) -> None:
        for job_type, path in msg.handlers.items():
            if job_type not in self.handlers:
                self.later[job_type] = (path, msg.schemas.get(job_type))

    def _import_later(self, job_type: str) -> None:
        """Import a type added by a reload, at its first job here.  A path that does not
        import fails that job (permanent: retrying cannot help) and keeps the worker,
        whose other types still run."""
        path, schema = self.later[job_type]
        from worker.errors import Permanent

        try:
            handler = resolve(path)
            model = resolve(schema) if schema else None
        except Exception as exc:
            raise Permanent(f"cannot import handler {path}"
                            f"{f' or schema {schema}' if schema else ''}: "
                            f"{type(exc).__name__}: {exc}") from None
        del self.later[job_type]
        self.handlers[job_type] = handler
        if model is not None:
            self.schemas[job_type] = model
        log.info("imported %s for job type %s (added by a reload)", path, job_type)

    # -- jobs -------------------------------------------------------------
    def run_job(self, msg: msgs.Run) -> bool:
        """Run one job; returns False when this worker should exit afterwards."""
        token, job_id, job_type, payload = msg.token, msg.job_id, msg.type, msg.payload
        attempt, deadline = msg.attempt, msg.deadline
        ctx = JobContext(job_id=job_id, job_type=job_type, attempt=attempt, deadline=deadline,
                         gpu=self.spec.get("gpu"), state=self.state, token=token,
                         send=self.send)
        self.current = ctx
        if self.capture is not None:
            self.capture.begin(token)
        keep = True
        try:
            if job_type in self.later:
                self._import_later(job_type)
            value = msgpack.unpackb(payload, raw=False) if payload else None
            schema = self.schemas.get(job_type)
            if schema is not None:
                value = schema.model_validate(value)
            self.soft.arm(msg.soft_timeout)
            try:
                result = self.handlers[job_type](value, ctx)
            finally:
                self.soft.disarm()
            if hasattr(result, "model_dump"):
                result = result.model_dump(mode="json")
            blob = pack(result)
        except JobFailure as exc:
            self._fail(token, exc.kind, exc, getattr(exc, "retry_after", None))
        except MemoryError as exc:
            self._fail(token, "memory", exc)
            keep = False  # a process that ran out of memory is not trusted again
        except Interrupt:
            self._end_output()  # stopped (a hard timeout): what it wrote still counts
            raise
        except BaseException as exc:  # a handler's sys.exit() or bug is its job's failure
            self._fail(token, "exception", exc)
        else:
            self._end_output()
            self.send(msgs.encode(msgs.Done(token, blob, "cancelled" if ctx.cancelled else "")))
        finally:
            self.current = None
        return keep

    def _end_output(self) -> None:
        """The job's last output goes before its outcome, so none of it is lost."""
        if self.capture is not None:
            self.capture.end()

    def _fail(self, token: str, kind: str, exc: BaseException,
              retry_after: float | None = None) -> None:
        message = f"{type(exc).__name__}: {exc}"
        tb = "".join(traceback.format_exception(exc))
        self._end_output()
        self.send(msgs.encode(msgs.Error(token, kind, message[:4000], tb[-16000:], retry_after)))

    def loop(self) -> int:
        self.send(msgs.encode(msgs.Ready(os.getpid())))
        while True:
            try:
                frames = self.chan.recv()
            except ChannelBroken:
                return 70  # the master is gone
            for frame in frames:
                msg = msgs.decode_to_worker(frame)
                if isinstance(msg, msgs.Run):
                    if not self.run_job(msg):
                        return 0
                elif isinstance(msg, msgs.Handlers):
                    self.add_types(msg)
                elif isinstance(msg, msgs.Stop):
                    return 0


def setup_logging(rt: Runtime) -> None:
    """Every record, the runtime's own included, goes to the master (``worker.capture``),
    which logs it in the daemon's format; a job's records are tagged with the job."""
    rt.capture = Capture(rt.send)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(CaptureHandler(rt.capture))
    rt.capture.start()


def run(spec: dict) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    random.seed()
    sys.path.insert(0, spec.get("cwd") or os.getcwd())
    rt = Runtime(spec)
    setup_logging(rt)
    try:
        rt.load()
    except BaseException as exc:  # report why, then exit non-zero: the pool backs off
        tb = "".join(traceback.format_exception(exc))
        rt.send(msgs.encode(msgs.InitFailed(os.getpid(), f"{type(exc).__name__}: {exc}",
                                            tb[-8000:])))
        os._exit(3)
    # Handler modules and init's state (a model, say) live as long as the worker: keep
    # the garbage collector from walking them again on every full pass.
    gc.freeze()
    threading.Thread(target=rt.heartbeat, name="heartbeat", daemon=True).start()
    try:
        code = rt.loop()
    except Interrupt:
        code = 0
    os._exit(code)
