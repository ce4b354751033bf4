"""Multi-worker training (``--strategy multiworker``): two worker processes on 127.0.0.1, joined by
TF_CONFIG, train a tiny model for a few steps and must end with identical weights; only the
chief writes the run folder, the other worker writes its own sub-folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from layernet import runfolder

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_ARGS = ["--size", "S", "--filters", "8", "--head-filters", "16", "--patch-size", "64",
             "--batch-size", "4", "--min-size", "30", "--data-option", "size=128",
             "--data-option", "count=8", "--epochs", "2", "--steps-per-epoch", "2",
             "--lr", "1e-3"]


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that were free on 127.0.0.1 a moment ago."""
    sockets = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def weights_of(path: str) -> list[np.ndarray]:
    from layernet.model import build_model, load_model_weights

    config = runfolder.config_for_model(path)
    net = build_model(config)
    load_model_weights(net, path)
    return [np.asarray(weight) for weight in net.weights]


@pytest.mark.parametrize("streaming", ["--no-stream", "--stream"])
def test_two_workers_end_with_identical_weights(tmp_path, streaming):
    run_dir = str(tmp_path / "run")
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=json.dumps(tf_config),
                   CUDA_VISIBLE_DEVICES="-1")
        processes.append(subprocess.Popen(
            [sys.executable, os.path.join(REPO, "train.py"), *TINY_ARGS, "--strategy",
             "multiworker", streaming, "--out", run_dir],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=220))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]

    chief_dir = run_dir
    worker_dir = os.path.join(run_dir, "worker-1")
    for folder in (chief_dir, worker_dir):
        state = runfolder.load_json(os.path.join(folder, runfolder.STATE_FILE))
        assert state["epoch"] == 2 and state["step"] == 4, (folder, state)
    assert not os.path.exists(os.path.join(worker_dir, "worker-1"))

    chief = weights_of(os.path.join(chief_dir, runfolder.LAST_FILE))
    worker = weights_of(os.path.join(worker_dir, runfolder.LAST_FILE))
    assert len(chief) == len(worker) > 0
    for first, second in zip(chief, worker):
        np.testing.assert_array_equal(first, second)
    history = runfolder.read_history(os.path.join(chief_dir, runfolder.HISTORY_FILE))
    assert [row["step"] for row in history] == [2, 4]
    assert all(np.isfinite(row["loss"]) for row in history)
    if streaming == "--stream":  # each worker streamed from a disk cache of its own
        for (_, stderr), folder in zip(outputs, (chief_dir, worker_dir)):
            assert "streaming the training data from a disk cache" in stderr, stderr[-2000:]
            assert any(name.endswith(".npz") for name in
                       os.listdir(os.path.join(folder, "cache"))), folder


def test_multiworker_without_tf_config_is_a_clear_error(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    done = subprocess.run(
        [sys.executable, os.path.join(REPO, "train.py"), *TINY_ARGS, "--strategy", "multiworker",
         "--out", str(tmp_path / "run")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "TF_CONFIG" in done.stderr
    assert not os.path.exists(tmp_path / "run" / runfolder.STATE_FILE)
