"""Start `python scripts/<x>.py ...` for the tests without paying ~4 s of imports each time.

A test session starts the CLI about 120 times, and each start spends most of its time importing torch and
Lightning. This server imports those third-party packages once, then forks one child per start. Each child
is a real process, as a plain `python script.py` would be:
- its own pid (tests signal and SIGKILL it), stdin / stdout / stderr, working dir and environment;
- sys.path and sys.argv as Python sets them for a script, and its own random seeds;
- the script run as `__main__`, then the interpreter's own ending (non-daemon threads joined, atexit
  handlers, streams flushed);
- its exit status reported back, -N when a signal ended it, as `subprocess.Popen.returncode` says.

Nothing of tinytransformer is imported before the fork, so the CLI's own imports run in every child.
What a child cannot have is what Python fixes at its own start: every child shares the server's string
hash seed (so set order of strings repeats across starts), and interpreter-level environment variables
(PYTHONHASHSEED, PYTHONUTF8, PYTHONIOENCODING, LANG/LC_*, ...) are the server's. `start_cli` therefore
starts a plain subprocess when a test sets any of those. Tests that need Python's real start
(import-order checks, the README's commands) use `subprocess` directly; `TT_TEST_FORKSERVER=0` makes
`start_cli` use it everywhere.

Protocol, over a Unix SEQPACKET socket: the client sends one JSON message (argv, cwd, env) with its three
stdio fds attached; the server answers the child's pid, then its exit code when it ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Third-party only: what `import tinytransformer.runtime.cli` and a training run pull in (the TensorBoard
# writer brings protobuf and absl: ~0.05 s a start).
PRELOAD = (
    "torch",
    "lightning.pytorch",
    "lightning.pytorch.loggers.tensorboard",
    "torch.utils.tensorboard",
    "hydra",
    "hydra.main",
    "omegaconf",
    "torchmetrics",
    "tensorboard",
)
MAX_MESSAGE = 1 << 20


# --- server side ------------------------------------------------------------------------------------


def serve(path: str) -> None:
    for name in PRELOAD:
        importlib.import_module(name)
    base_path = [p for p in sys.path[1:] if p not in os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    parent = os.getppid()
    print("ready", flush=True)
    children: dict[int, socket.socket] = {}
    while os.getppid() == parent:  # the test session ended without stopping us: stop too
        ready, _, _ = select.select([listener], [], [], 0.02)
        if ready:
            conn, _ = listener.accept()
            message, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, 3)
            sys.stdout.flush(), sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                listener.close()
                for other in children.values():
                    other.close()
                conn.close()
                run_child(json.loads(message), fds, base_path, os.environ.get("PYTHONWARNINGS"))  # no return
            for fd in fds:
                os.close(fd)
            conn.send(str(pid).encode())
            children[pid] = conn
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = children.pop(pid)
            with contextlib.suppress(OSError):  # the client may be gone
                conn.send(str(os.waitstatus_to_exitcode(status)).encode())
            conn.close()


def run_child(request: dict, fds: list[int], base_path: list[str], base_warnings: str | None) -> None:
    """In the forked child: become `python <argv>` in `cwd` with `env`, run it, exit as Python would."""
    code = 1
    try:
        code = _become_and_run(request, fds, base_path, base_warnings)
    except BaseException:  # a broken request: say so on the child's stderr, as a failed start would
        sys.excepthook(*sys.exc_info())
    finally:
        os._exit(code)


def _become_and_run(request: dict, fds: list[int], base_path: list[str], base_warnings: str | None) -> int:
    import atexit
    import runpy
    import threading
    import warnings

    # Sources above 2 first: a received fd may itself be 0-2 (when the server's own stdio was closed).
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 3) if fd <= 2 else fd for fd in fds]
    for target, fd in enumerate(high):
        os.dup2(fd, target)
    for fd in set(high) | set(fds):
        if fd > 2:
            os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    argv = request["argv"]
    script = str(Path(argv[0]).resolve())
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [str(Path(script).parent), *extra, *base_path]
    sys.argv = argv
    if os.environ.get("PYTHONWARNINGS") != base_warnings:  # the server's own are already in force
        warnings._processoptions([o for o in os.environ.get("PYTHONWARNINGS", "").split(",") if o])

    import numpy
    import torch

    numpy.random.seed()  # a fresh process draws a fresh numpy seed; `random` reseeds itself at fork
    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    code = 0
    interrupted = False
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        if stop.code is None:
            code = 0
        elif isinstance(stop.code, int):
            code = stop.code
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        sys.excepthook(*sys.exc_info())
        interrupted = True
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    threading._shutdown()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    if interrupted:  # as Python ends on an uncaught KeyboardInterrupt: killed by SIGINT (-2)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return code


# --- client side ------------------------------------------------------------------------------------


class ForkServer:
    """One server per test session, started on first use."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="tt-forkserver-")
        self.path = os.path.join(self.dir, "socket")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        self.proc = subprocess.Popen(
            [sys.executable, __file__, self.path], stdout=subprocess.PIPE, text=True, env=env
        )
        assert self.proc.stdout.readline() == "ready\n", "the test fork server did not start"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        Path(self.path).unlink(missing_ok=True)
        os.rmdir(self.dir)


class ForkedProcess:
    """What the tests use of `subprocess.Popen` (text mode), for a child of the fork server."""

    def __init__(self, server: ForkServer, args: list[str], *, stdout, stderr, env: dict, cwd) -> None:
        self.args, self.returncode = args, None
        self.stdout = self.stderr = None
        stdin = os.open(os.devnull, os.O_RDONLY)
        out_fd, self._out = self._target(stdout)
        err_fd, self._err = (out_fd, None) if stderr == subprocess.STDOUT else self._target(stderr)
        self._chunks = {self._out: [], self._err: []}
        self.stdout, self.stderr = self._out, self._err
        self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._conn.connect(server.path)
        request = {"argv": args[1:], "cwd": str(cwd), "env": env}
        socket.send_fds(self._conn, [json.dumps(request).encode()], [stdin, out_fd, err_fd])
        for fd in {stdin, out_fd, err_fd} - {self._fileno(stdout), self._fileno(stderr)}:
            os.close(fd)
        self.pid = int(self._conn.recv(64))

    @staticmethod
    def _fileno(target) -> int | None:
        return target.fileno() if hasattr(target, "fileno") else None

    @staticmethod
    def _target(target):
        """(the fd the child writes, the pipe's read end for the test or None)."""
        if target == subprocess.PIPE:
            read, write = os.pipe()
            return write, os.fdopen(read, "rb")
        if target is None or target == subprocess.DEVNULL:
            return os.open(os.devnull, os.O_WRONLY), None
        return target.fileno(), None

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self._conn], [], [], 0)[0]:
            answer = self._conn.recv(64)
            assert answer, f"the test fork server died while running {self.args}"
            self.returncode = int(answer)
            self._conn.close()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not select.select([self._conn], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self.poll()
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str | None, str | None]:
        deadline = None if timeout is None else time.monotonic() + timeout
        pipes = [p for p in (self._out, self._err) if p is not None and not p.closed]
        while pipes:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = select.select(pipes, [], [], left)[0]
            if not ready:
                raise subprocess.TimeoutExpired(self.args, timeout)
            for pipe in ready:
                data = os.read(pipe.fileno(), 1 << 16)
                if data:
                    self._chunks[pipe].append(data)
                else:
                    pipe.close()
                    pipes.remove(pipe)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return self._text(self._out), self._text(self._err)

    def _text(self, pipe) -> str | None:
        if pipe is None:
            return None
        text = b"".join(self._chunks[pipe]).decode()
        return text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as Popen(text=True)

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # ended a moment ago, as Popen allows
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


if __name__ == "__main__":
    serve(sys.argv[1])
