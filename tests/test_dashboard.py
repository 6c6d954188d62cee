"""The Ray dashboard: a run submitted through its job API, the run's metrics on the node's
Prometheus endpoint. A head node of its own (`ray start --head --block`, ended by its
process group), beside the tests' session cluster."""

import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from conftest import tiny_yaml_config
from test_cli import write

JOB = """
dash:
  env: PointReach
  run: FlowSDE
  stop: {training_iteration: 12}
  config:""" + tiny_yaml_config(256)
METRICS = ("pirl_env_steps_per_s", "pirl_success_rate", "pirl_learner_samples_per_s", "pirl_iteration_time_s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_exe(name):
    return os.path.join(os.path.dirname(sys.executable), name)


@pytest.fixture
def head_node(tmp_path):
    pytest.importorskip("aiohttp", reason="the dashboard needs ray[default]")
    gcs, dashboard, metrics = free_port(), free_port(), free_port()
    with open(tmp_path / "head.log", "w") as log:
        head = subprocess.Popen(
            [
                ray_exe("ray"),
                "start",
                "--head",
                f"--port={gcs}",
                f"--dashboard-port={dashboard}",
                "--dashboard-host=127.0.0.1",
                f"--metrics-export-port={metrics}",
                # every port of its own: the tests' session cluster (or any other Ray on this
                # machine) holds the defaults, e.g. the dashboard agent's 52365
                f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}",
                "--num-cpus=2",
                "--include-dashboard=true",
                "--block",
            ],
            start_new_session=True,
            stdout=log,
            stderr=log,
            env=dict(os.environ, RAY_metrics_report_interval_ms="500"),  # metrics exported twice a second
        )
    try:
        deadline = time.time() + 120
        while True:  # the dashboard answers (401 without the token: it is up)
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{dashboard}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                assert head.poll() is None and time.time() < deadline, (tmp_path / "head.log").read_text()[-3000:]
                time.sleep(0.5)
        yield f"http://127.0.0.1:{dashboard}", f"http://127.0.0.1:{metrics}/metrics"
    finally:
        head.terminate()  # `ray start --block` stops the node's processes, then the rest of its group
        try:
            head.wait(timeout=60)
        finally:
            try:
                os.killpg(head.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # the head's address file would make later ray.init() calls join this (dead) cluster
        current = pathlib.Path("/tmp/ray/ray_current_cluster")
        if current.exists() and current.read_text().strip().endswith(f":{gcs}"):
            current.unlink()


def test_a_run_submitted_through_the_job_api_succeeds_and_its_metrics_reach_prometheus(head_node, tmp_path):
    dashboard, prometheus = head_node
    # `ray job submit` (the dashboard's job API) with Ray 2.60's token: RAY_AUTH_MODE=token makes
    # the client send ~/.ray/auth_token, which `ray start` wrote
    cmd = [ray_exe("ray"), "job", "submit", f"--address={dashboard}", "--"]
    cmd += ["rllib", "train", "file", write(tmp_path, JOB), "--storage-path", str(tmp_path / "runs")]
    seen, deadline = {}, time.time() + 120
    while True:  # the job agent registers a little after the dashboard answers
        with open(tmp_path / "job.log", "w") as log:
            job = subprocess.Popen(cmd, stdout=log, stderr=log, env=dict(os.environ, RAY_AUTH_MODE="token"))
        while job.poll() is None and "submitted successfully" not in (tmp_path / "job.log").read_text():
            time.sleep(0.2)
        if job.poll() is None or "No available agent" not in (tmp_path / "job.log").read_text():
            break
        assert time.time() < deadline, (tmp_path / "job.log").read_text()[-3000:]
        time.sleep(2)
    try:
        while job.poll() is None:
            try:
                text = urllib.request.urlopen(prometheus, timeout=5).read().decode()
            except OSError:
                text = ""
            for name in METRICS:
                found = re.search(
                    rf'^ray_{name}{{[^}}]*algorithm="FlowSDE",[^}}]*trial="FlowSDE_PointReach_\w{{5}}_00000"}} (\S+)$',
                    text,
                    re.MULTILINE,
                )
                if found:
                    seen[name] = float(found.group(1))
            time.sleep(0.5)
    finally:
        if job.poll() is None:
            job.kill()
    out = (tmp_path / "job.log").read_text()
    assert job.returncode == 0 and re.search(r"Job '\S+' succeeded", out), out[-3000:]
    assert set(seen) == set(METRICS), (seen, out[-2000:])
    assert seen["pirl_env_steps_per_s"] > 0 and seen["pirl_learner_samples_per_s"] > 0
    assert 0 <= seen["pirl_success_rate"] <= 1 and seen["pirl_iteration_time_s"] > 0
