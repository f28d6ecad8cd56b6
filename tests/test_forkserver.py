"""A child of the tests' fork server ends as `python script.py` does: same exit codes (signals as -N), same
output, same working dir, environment and argv; tests that set what only a fresh interpreter honours get
one."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from tests.conftest import fork_server, interpreter_env_differs, start_cli, wait_until
from tests.forkserver import ForkedProcess

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    print("argv", sys.argv[1:], "cwd", os.getcwd(), "env", os.environ.get("TT_PROBE"))
    print("to stderr", file=sys.stderr)
    how = sys.argv[1]
    if how == "exit3":
        sys.exit(3)
    if how == "raise":
        raise ValueError("boom")
    if how == "ctrl_c":
        raise KeyboardInterrupt
    if how == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
    """
)


@pytest.mark.parametrize("how", ["ok", "exit3", "raise", "ctrl_c", "sigterm"])
def test_a_forked_child_ends_as_a_fresh_interpreter_does(tmp_path, how):
    server = fork_server()
    if server is None:
        pytest.skip("TT_TEST_FORKSERVER=0")
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    command = [sys.executable, str(script), how]
    env = {**os.environ, "TT_PROBE": "seen"}
    fresh = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    forked = ForkedProcess(
        server, command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path
    )
    out, err = forked.communicate(timeout=60)
    assert forked.returncode == fresh.returncode
    assert out == fresh.stdout and f"cwd {tmp_path} env seen" in out
    assert err.splitlines()[-1:] == fresh.stderr.splitlines()[-1:]  # e.g. "ValueError: boom"


def test_a_sigkilled_child_reads_minus_nine_and_its_pipes_end(tmp_path):
    server = fork_server()
    if server is None:
        pytest.skip("TT_TEST_FORKSERVER=0")
    script = tmp_path / "sleeper.py"
    script.write_text(
        "import pathlib, time\nprint('up', flush=True)\npathlib.Path('up').touch()\ntime.sleep(60)\n"
    )
    proc = ForkedProcess(server, [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         env=dict(os.environ), cwd=tmp_path)  # fmt: skip
    wait_until(lambda: (tmp_path / "up").exists(), proc, timeout=60, what="the child's start")
    proc.kill()
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL and out == "up\n"
    proc.kill()  # already ended: no error, as with Popen


def test_what_python_reads_at_start_gets_a_fresh_interpreter():
    assert not interpreter_env_differs({**os.environ, "PYTHONPATH": "/x", "TT_ANYTHING": "1"})
    assert interpreter_env_differs({**os.environ, "PYTHONHASHSEED": "7"})
    assert interpreter_env_differs(
        {**os.environ, "LC_ALL": "C.UTF-8" if os.environ.get("LC_ALL") != "C.UTF-8" else "C"}
    )
    proc = start_cli("train.py", "--help", output=subprocess.PIPE, env={"PYTHONHASHSEED": "7"})
    proc.communicate(timeout=120)
    assert isinstance(proc, subprocess.Popen)
