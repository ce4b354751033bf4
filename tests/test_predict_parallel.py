"""Prediction speed-ups give the same files: the network overlapped with post-processing
(:mod:`layernet.ordered_worker`, :func:`layernet.batch_predict.predict_files`) and
``predict.py --workers N`` (:func:`layernet.batch_predict.predict_files_in_processes`), whose
files are those of one process with the workers' TensorFlow thread count.

The model is an untrained UNet-S with 4 filters (seed 1, whose random maps hold hundreds of noise
objects, so the comparisons are not between empty stacks).
"""

from __future__ import annotations

import filecmp
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import CancelledError

import numpy as np
import pytest
import tifffile

from bench.predict import synthetic_mosaic
from bench.predict_memory import make_inputs
from layernet.batch_predict import FileResult, PredictOptions, predict_files
from layernet.ordered_worker import OrderedWorker
from tests.conftest import REPO, run_cli

MODEL_SEED = 1
MIN_SIZE = "5"
# Probability maps computed with different TensorFlow thread counts: the threads split the long
# float32 sums of a convolution differently, so a value can differ in its last bits. Measured on
# an AVX2 CPU, 2 threads against 1 and Eigen against oneDNN: at most 2 float32 spacings (1.2e-7;
# the spacing is 6e-8 at 0.5, where this model's maps lie, 0.487 to 0.508). 1e-5 is about 170
# spacings there; a map shifted by one pixel already differs by 1.7e-3 or more, 170 times that.
MAPS_ATOL = 1e-5


# ------------------------------------------------------------------------------------------
# OrderedWorker


def test_ordered_worker_runs_jobs_in_order_and_passes_errors_on() -> None:
    done: list[int] = []
    with OrderedWorker(depth=2) as worker:
        futures = [worker.submit(lambda i=i: done.append(i) or i * i) for i in range(20)]
        failing = worker.submit(lambda: 1 / 0)
        after = worker.submit(lambda: "still runs")
    assert done == list(range(20))
    assert [future.result() for future in futures] == [i * i for i in range(20)]
    with pytest.raises(ZeroDivisionError):
        failing.result()
    assert after.result() == "still runs"


def test_ordered_worker_sequential_runs_jobs_at_once_in_this_thread() -> None:
    worker = OrderedWorker(threaded=False)
    future = worker.submit(threading.get_ident)
    assert future.done() and future.result() == threading.get_ident()
    with pytest.raises(ValueError, match="depth"):
        OrderedWorker(depth=0)


def test_ordered_worker_interrupted_while_starting_its_thread(monkeypatch) -> None:
    """Ctrl-C or SIGTERM inside Thread.start() (seen in CI: a predict.py worker stopped while
    starting its post-processing thread): the interruption propagates, not a RuntimeError from
    joining a thread that never started."""
    def interrupted_start(thread: threading.Thread) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(threading.Thread, "start", interrupted_start)
    with pytest.raises(KeyboardInterrupt):
        with OrderedWorker(depth=1) as worker:
            worker.submit(lambda: None)
    monkeypatch.undo()
    with OrderedWorker(depth=1) as worker:   # and a new worker starts as before
        assert worker.submit(lambda: 5).result(10) == 5


def test_ordered_worker_blocks_when_the_queue_is_full_and_cancels_on_error() -> None:
    release = threading.Event()
    started = threading.Event()
    submitted: list[int] = []

    def blocked() -> None:
        started.set()
        release.wait(10)

    worker = OrderedWorker(depth=1)
    first = worker.submit(blocked)
    assert started.wait(10)
    worker.submit(lambda: None)  # waits in the queue (depth 1)
    producer = threading.Thread(target=lambda: submitted.append(worker.submit(lambda: None)))
    producer.start()
    producer.join(0.3)
    assert producer.is_alive() and not submitted  # a third job must wait for room
    release.set()
    producer.join(10)
    assert len(submitted) == 1
    worker.close()
    assert first.done()

    release.clear()
    started.clear()
    with pytest.raises(KeyError):
        with OrderedWorker(depth=1) as worker:
            running = worker.submit(blocked)
            started.wait(10)
            waiting = worker.submit(lambda: "never")
            threading.Timer(0.2, release.set).start()
            raise KeyError("stop")
    assert running.done() and running.exception() is None  # the running job was finished
    with pytest.raises(CancelledError):
        waiting.result()


# ------------------------------------------------------------------------------------------
# overlapped == sequential, in process


@pytest.fixture(scope="module")
def model_and_images(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("parallel")
    _, run = make_inputs(str(folder), 32, seed=MODEL_SEED)
    images = folder / "images"
    images.mkdir()
    for index, (height, width) in enumerate([(96, 120), (64, 64), (300, 260), (80, 100)]):
        image, _ = synthetic_mosaic(max(height, width), seed=index)
        tifffile.imwrite(str(images / f"im{index}.tif"),
                         image[:height, :width, 0].astype(np.uint16))
    (images / "broken.tif").write_bytes(b"II*\x00 not a tiff")
    return {"run": run, "images": str(images), "folder": str(folder)}


@pytest.fixture(scope="module")
def predictor(model_and_images):
    from layernet.batch_predict import load_predictor

    return load_predictor(model_and_images["run"], config_changes={"min_size": int(MIN_SIZE)})


def _jobs(images: str, out: str) -> list[tuple[int, str, str]]:
    names = sorted(os.listdir(images))
    return [(index, os.path.join(images, name), os.path.join(out, os.path.splitext(name)[0]))
            for index, name in enumerate(names)]


def _same_files(first: str, second: str) -> list[str]:
    """The two folders hold the same files, byte for byte; return their names."""
    names = sorted(os.listdir(first))
    assert names == sorted(os.listdir(second))
    names = [name for name in names if os.path.isfile(os.path.join(first, name))]
    comparison = filecmp.cmpfiles(first, second, names, shallow=False)
    assert comparison[0] == names, comparison
    return names


def _same_names_and_close_maps(first: str, second: str) -> list[str]:
    """The two folders hold files of the same names and ``.prob.tif`` maps of the same shape
    that differ by at most ``MAPS_ATOL``; return the names of the maps."""
    names = sorted(os.listdir(first))
    assert names == sorted(os.listdir(second))
    maps = [name for name in names if name.endswith(".prob.tif")]
    for name in maps:
        expected, actual = (tifffile.imread(os.path.join(folder, name))
                            for folder in (first, second))
        assert actual.shape == expected.shape and actual.dtype == expected.dtype, name
        np.testing.assert_allclose(actual, expected, rtol=0, atol=MAPS_ATOL, err_msg=name)
    return maps


def test_overlapped_files_equal_sequential_files(model_and_images, predictor, tmp_path) -> None:
    folders = {}
    for overlapped in (False, True):
        out = str(tmp_path / f"overlapped-{overlapped}")
        os.makedirs(out)
        jobs = _jobs(model_and_images["images"], out)
        # im3 gets an output name that is a folder: it fails while being written (in the
        # background thread when overlapped), after the network, and must still be reported
        os.makedirs(jobs[4][2] + ".layers.tif")
        results: list[FileResult] = []
        options = PredictOptions(tile_size=128, tile_overlap=24, tile_batch=2, prob=True,
                                 rois=True, coco=True, overlapped=overlapped)
        progress = []
        predict_files(predictor, jobs, options, results.append,
                      on_tiles=lambda *args: progress.append(args))
        assert [result.index for result in results] == list(range(len(jobs)))  # in order
        # tile progress of the one tiled image, batch by batch (2 tiles per network call)
        assert progress == [(jobs[3][1], done, 8) for done in (2, 4, 6, 8)]
        errors = {result.path: result.error for result in results if result.error}
        assert sorted(errors) == [jobs[0][1], jobs[4][1]]  # broken.tif, im3.tif
        assert "no image data" in errors[jobs[0][1]] and "\n" not in errors[jobs[0][1]]
        assert errors[jobs[4][1]].startswith(jobs[4][1] + ": ")
        tiled = [result for result in results if result.tiles > 1]
        assert [os.path.basename(result.path) for result in tiled] == ["im2.tif"]
        # 300 x 260 in tiles of at most 128^2 px, overlap 24: balanced 4 x 2 tiles of 96 x 144 (stride 8)
        assert tiled[0].tiles == 8 and tiled[0].objects >= 10, tiled
        folders[overlapped] = out
    names = _same_files(folders[False], folders[True])
    assert "im2.layers.tif" in names and "im2.prob.tif" in names
    assert not [name for name in names if name.startswith(".")]


def test_overlapped_tiles_equal_sequential_tiles(model_and_images, predictor) -> None:
    from layernet.tiling import predict_image

    image = tifffile.imread(os.path.join(model_and_images["images"], "im2.tif"))[..., None]
    sequential, overlapped = {}, {}
    progress = []
    first = predict_image(predictor, image, tile_size=64, overlap=16, keep_maps=True,
                          timings=sequential, batch_size=5,
                          on_tiles=lambda done, total: progress.append((done, total)))
    with OrderedWorker(depth=1) as worker:
        second = predict_image(predictor, image, tile_size=64, overlap=16, keep_maps=True,
                               timings=overlapped, worker=worker, batch_size=5)
    assert first.tiles == second.tiles == 36
    assert progress == [(done, 36) for done in (5, 10, 15, 20, 25, 30, 35, 36)]
    np.testing.assert_array_equal(first.stack, second.stack)
    np.testing.assert_array_equal(first.layering, second.layering)
    assert np.unique(first.stack).size > 10
    assert set(sequential) == set(overlapped) == {"normalize", "network", "postprocess"}


# ------------------------------------------------------------------------------------------
# predict.py --workers


def _predict_in_process(argv: list[str], capsys) -> tuple[int, str]:
    """``python predict.py argv`` run in this process (the model is loaded here); exit code and
    stderr."""
    from layernet_commands import predict

    capsys.readouterr()
    code = predict.main(argv)
    return code, capsys.readouterr().err


def test_workers_give_the_same_files_and_report_bad_files(model_and_images, tmp_path,
                                                          capsys) -> None:
    """``--workers 2`` writes, byte for byte, the files of one process running with the workers'
    TensorFlow thread count (``TF_NUM_INTRAOP_THREADS``), and reports the bad file as it does.

    One process with its own thread count (all cores) reports the same and writes files of the
    same names with maps equal up to float32 rounding (``MAPS_ATOL``). It runs in this process,
    whose TensorFlow was imported before predict.py sets ``TF_ENABLE_ONEDNN_OPTS=1``: where
    oneDNN is not TensorFlow's default (as on the AVX2 CI machine) its kernels are Eigen's,
    another order of the sums again. Its label stacks are not compared: a map value within a
    rounding of ``tau`` (this model's maps hug 0.5 and hold values equal to it) may fall on its
    other side.
    """
    argv = [model_and_images["images"], "--model", model_and_images["run"], "--tile-size", "128",
            "--min-size", MIN_SIZE, "--save-prob", "--save-coco", "--verbose"]
    runs = {}
    out = str(tmp_path / "workers")
    result = run_cli("predict.py", *argv, "--out", out, "--workers", "2", timeout=240)
    threads = re.search(r"2 worker processes, (\d+) TensorFlow thread", result.stderr)
    assert threads, result.stderr[-3000:]
    assert re.search(r"im2.tif: \d+ objects \(8 tiles\)", result.stderr)
    runs["workers"] = out, result.returncode, result.stderr
    out = str(tmp_path / "one-process-worker-threads")
    result = run_cli("predict.py", *argv, "--out", out, timeout=240,
                     env={"TF_NUM_INTRAOP_THREADS": threads[1],
                          "TF_NUM_INTEROP_THREADS": threads[1]})
    runs["one process, worker threads"] = out, result.returncode, result.stderr
    out = str(tmp_path / "one-process")
    runs["one process"] = (out, *_predict_in_process(argv + ["--out", out], capsys))
    reported = set()
    for out, code, stderr in runs.values():
        assert code == 1, stderr[-3000:]
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "broken.tif" in errors[0], stderr[-3000:]
        assert "predicted 4 of 5 image(s)" in stderr
        reported.add(errors[0])
    assert len(reported) == 1, reported  # the same line
    names = _same_files(runs["one process, worker threads"][0], runs["workers"][0])
    assert len(names) == 4 * 4 and not [name for name in names if "broken" in name]
    maps = _same_names_and_close_maps(runs["one process"][0], runs["workers"][0])
    assert len(maps) == 4


def test_more_workers_than_files_and_a_model_that_does_not_load(model_and_images, tmp_path,
                                                                 capsys) -> None:
    """One file and --workers 8: one worker starts; it cannot load the model, which ends the
    run with the one-line loading error and exit code 2, as in one process."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(os.path.join(model_and_images["run"], "config.json"), run / "config.json")
    (run / "best.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"garbage" * 10)
    image = os.path.join(model_and_images["images"], "im1.tif")
    argv = [image, "--model", str(run), "--out", str(tmp_path / "out")]
    with pytest.raises(Exception) as in_process:
        _predict_in_process(argv, capsys)
    result = run_cli("predict.py", *argv, "--workers", "8", timeout=240)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "1 worker processes" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == "error: " + str(in_process.value).strip().splitlines()[0], last
    assert str(run / "best.h5") in last
    result = run_cli("predict.py", image, "--model", str(run), "--workers", "0")
    assert result.returncode == 2 and "--workers must be >= 1" in result.stderr


def test_interrupted_workers_leave_no_thread_or_process_behind(model_and_images,
                                                               tmp_path) -> None:
    """A KeyboardInterrupt while results come in (as Ctrl-C in ``_collect``): it propagates, the
    workers are joined, and this process never ran a multiprocessing queue feeder thread (a
    daemon thread holding a queue's semaphores at exit can be stopped midway through releasing
    them, and the resource tracker then warns about "leaked semaphore objects")."""
    import multiprocessing

    from layernet.batch_predict import predict_files_in_processes

    out = tmp_path / "out"
    out.mkdir()
    jobs = [job for job in _jobs(model_and_images["images"], str(out)) if "broken" not in job[1]]
    threads_seen: list[str] = []
    threads_before = set(threading.enumerate())

    def interrupt(result: FileResult) -> None:
        threads_seen.extend(thread.name for thread in threading.enumerate())
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict_files_in_processes(model_and_images["run"], jobs, PredictOptions(tile_size=128),
                                   1, interrupt, config_changes={"min_size": int(MIN_SIZE)})
    assert threads_seen and not [name for name in threads_seen if "Feeder" in name], threads_seen
    assert not multiprocessing.active_children()
    assert set(threading.enumerate()) <= threads_before


def test_ctrl_c_stops_the_workers_and_leaves_no_partial_file(model_and_images,
                                                              tmp_path) -> None:
    images = tmp_path / "many"
    images.mkdir()
    source = open(os.path.join(model_and_images["images"], "im2.tif"), "rb").read()
    for index in range(60):
        (images / f"copy{index:02d}.tif").write_bytes(source)
    out = tmp_path / "out"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "predict.py"), str(images), "--model",
         model_and_images["run"], "--out", str(out), "--workers", "2", "--tile-size", "64",
         "--quiet"], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 180
        while not (out.exists() and any(name.endswith(".overlay.png")
                                        for name in os.listdir(out))):
            assert process.poll() is None and time.monotonic() < deadline, "no output"
            time.sleep(0.05)
        workers = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "--ppid", str(process.pid)],
                                 capture_output=True, text=True).stdout.splitlines()
        workers = [int(line.split()[0]) for line in workers if "spawn_main" in line]
        assert len(workers) == 2, workers
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, stderr[-2000:]
    # communicate() read stderr to its end, which multiprocessing's resource tracker (a separate
    # process) also writes to: it would warn here about semaphores not released at exit
    assert "resource_tracker" not in stderr and "leaked" not in stderr, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == "error: interrupted", stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    for pid in workers:
        assert not os.path.exists(f"/proc/{pid}") or \
            open(f"/proc/{pid}/stat").read().split()[2] == "Z", f"worker {pid} still runs"
    names = os.listdir(out)
    assert not [name for name in names if name.startswith(".")], names  # no temporary file
    assert len([name for name in names if name.endswith(".layers.tif")]) < 60
