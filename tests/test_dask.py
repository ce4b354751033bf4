"""Tests of prediction on a Dask cluster (``predict.py --dask``, :mod:`layernet.distributed`).

A ``LocalCluster`` of 2 workers predicts a folder through ``predict.py --dask <scheduler>``: two
small images go to the workers as files, and a TIFF predicted in strips has its tile batches
spread over the workers and stitched by the client. The outputs must be those of one process,
byte for byte. The workers are threads of this process (``processes=False``): they load the
model once and run it with this process's TensorFlow threads, so the maps are bit for bit those
of one process here (separate worker processes would sum floats with their own thread count, see
``layernet.batch_predict``), and the test pays no second TensorFlow start-up. ``local:N``
(worker processes) is started once on its own, without a model.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("distributed")

from layernet.io import write_image_atomic  # noqa: E402


def _files(folder):
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, folder)] = handle.read()
    return found


def test_dask_cluster_writes_the_files_of_one_process(tiny_run, tmp_path):
    import tifffile
    from distributed import LocalCluster

    from bench.predict import synthetic_mosaic
    from datasets.synthetic import generate_sample
    from layernet_commands import predict

    images = tmp_path / "images"
    images.mkdir()
    for index, name in enumerate(("a", "b")):
        sample = generate_sample(np.random.default_rng(index), "cells", 96)
        write_image_atomic(str(images / f"{name}.png"),
                           (sample.image[..., 0] * 200).astype(np.uint16))
    raw, _ = synthetic_mosaic(320, block_size=160, seed=4)
    tifffile.imwrite(str(images / "plate.tif"), (raw[..., 0] * 150).astype(np.uint16),
                     tile=(64, 64))
    common = [str(images), "--model", tiny_run, "--strips", "always", "--tile-size", "96",
              "--min-size", "20", "--save-coco", "--quiet"]
    assert predict.main(common + ["--out", str(tmp_path / "one")]) == 0
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp",
                      dashboard_address=None) as cluster:
        assert predict.main(common + ["--out", str(tmp_path / "dask"), "--dask",
                                      cluster.scheduler_address]) == 0
        tasks = cluster.scheduler.task_prefixes
        assert {"predict_file_task", "tile_batch_task"} <= set(tasks)  # both ways ran there
    expected, written = _files(tmp_path / "one"), _files(tmp_path / "dask")
    assert sorted(written) == sorted(expected) == [
        "a.coco.json", "a.layers.tif", "a.overlay.png", "b.coco.json", "b.layers.tif",
        "b.overlay.png", "plate.coco.json", "plate.layers.tif", "plate.overlay.png"]
    assert b'"annotations":[{' in expected["plate.coco.json"], "the test needs objects"
    for name in expected:
        assert written[name] == expected[name], name


def test_local_cluster_of_worker_processes_and_bad_addresses():
    from layernet.distributed import open_client

    with open_client("local:1") as client:
        assert client.submit(sum, [1, 2]).result() == 3
        assert len(client.scheduler_info()["workers"]) == 1
    for address in ("local:0", "local:two"):
        with pytest.raises(ValueError, match=f"--dask {address}: "):
            with open_client(address):
                pass
