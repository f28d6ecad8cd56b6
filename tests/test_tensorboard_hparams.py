"""A real `tensorboard` server on a sweep: its HPARAMS tab opens on the comparison (the swept hparams first and
shown, the constants after, the hp/ metrics shown), as its hparams plugin's HTTP API tells the page."""

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from tests.conftest import IN_PROCESS, run_cli
from tests.test_loggers import QUICK

from tinytransformer.runtime.callbacks.hparams import HP_METRICS

JOBS = ("0_dropout=0", "1_dropout=0.1")
# What the page asks for (tf-hparams-main's getExperiment); it lists the hparams as the answer orders them,
# moves those that differ first and shows the first five, and shows the first five metrics.
EXPERIMENT_REQUEST = {"experimentName": "", "hparamsLimit": 1000}
SESSION_GROUPS_REQUEST = {
    "experimentName": "",
    "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
    "colParams": [],
    "startIndex": 0,
    "sliceSize": 100,
}
# No proxy for 127.0.0.1, whatever the environment says.
LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    log_dir = tmp_path_factory.mktemp("logs")
    result = run_cli("train.py", "-m", *QUICK, IN_PROCESS, "model.dropout=0,0.1", f"paths.log_dir={log_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = list((log_dir / "train" / "multiruns").glob("*/*"))
    return sweep


@pytest.fixture(scope="module")
def server(sweep_dir):
    """The URL of `tensorboard --logdir <sweep dir>` on a free port of 127.0.0.1, once it has read the sweep."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [str(Path(sys.executable).with_name("tensorboard")), "--logdir", str(sweep_dir)]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_sessions(url, proc, len(JOBS))
        yield url
    finally:
        proc.kill()
        proc.communicate()


def wait_for_sessions(url: str, proc: subprocess.Popen, count: int, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while True:
        if proc.poll() is not None:
            pytest.skip(f"tensorboard could not start here: {proc.communicate()[1].strip()[-500:]}")
        try:
            if len(post(url, "session_groups", SESSION_GROUPS_REQUEST)["sessionGroups"]) == count:
                return
        except OSError:  # not listening yet
            pass
        assert time.time() < deadline, f"tensorboard did not list {count} sessions within {timeout} s"
        time.sleep(0.5)


def post(url: str, route: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{url}/data/plugin/hparams/{route}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with LOCAL.open(request, timeout=30) as answer:
        return json.load(answer)


def test_the_swept_hparam_comes_first_flagged_as_differing_and_the_constants_after(server):
    infos = post(server, "experiment", EXPERIMENT_REQUEST)["hparamInfos"]
    assert infos[0]["name"] == "model.dropout" and infos[0]["differs"] is True
    constants = infos[1:]
    assert not any(info.get("differs") for info in constants)
    names = [info["name"] for info in constants]
    assert {"seed", "batch_size", "block_size", "corpus", "d_model", "lr"} <= set(names)
    assert names == sorted(names)


def test_the_hp_metrics_are_the_experiments_metrics_val_loss_best_first(server):
    metrics = post(server, "experiment", EXPERIMENT_REQUEST)["metricInfos"]
    assert [m["name"]["tag"] for m in metrics] == list(HP_METRICS)  # all five shown (the page shows five)


def test_each_session_is_a_job_of_the_sweep_with_its_values_and_measured_hp_metrics(server):
    groups = post(server, "session_groups", SESSION_GROUPS_REQUEST)["sessionGroups"]
    by_job = {group["name"].removesuffix("/tensorboard"): group for group in groups}
    assert sorted(by_job) == list(JOBS)
    assert max(len(job) for job in by_job) <= 18  # the table's Trial ID column shows ~18 characters (10em)
    for job, group in by_job.items():
        assert group["hparams"]["model.dropout"] == (0.1 if job.endswith("0.1") else 0)
        values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        assert set(values) == set(HP_METRICS) and 0 < values["hp/val_loss_best"] < 5
