"""Tests of prediction on a Dask cluster (``predict.py --dask``, :mod:`layernet.distributed`).

One ``LocalCluster`` of 2 worker processes (1 thread each) predicts a folder: two small images
go to the workers as files, and a TIFF predicted in strips has its tile batches spread over the
workers and stitched here. The outputs must be those of one process with the workers' thread
count (TensorFlow's float sums depend on it, see ``layernet.batch_predict``): the same files,
byte for byte.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("distributed")

from layernet.io import write_image_atomic  # noqa: E402
from tests.conftest import run_cli  # noqa: E402


def _files(folder):
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, folder)] = handle.read()
    return found


def test_dask_local_cluster_writes_the_files_of_one_process(tiny_run, tmp_path):
    import tifffile

    from bench.predict import synthetic_mosaic
    from datasets.synthetic import generate_sample

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
    one = run_cli("predict.py", *common, "--out", str(tmp_path / "one"),
                  env={"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"})
    assert one.returncode == 0, one.stderr[-3000:]
    dask = run_cli("predict.py", *common, "--out", str(tmp_path / "dask"), "--dask", "local:2",
                   timeout=240)
    assert dask.returncode == 0, dask.stderr[-3000:]
    assert "predicted 3 of 3 image(s)" in dask.stderr
    expected, written = _files(tmp_path / "one"), _files(tmp_path / "dask")
    assert sorted(written) == sorted(expected) == [
        "a.coco.json", "a.layers.tif", "a.overlay.png", "b.coco.json", "b.layers.tif",
        "b.overlay.png", "plate.coco.json", "plate.layers.tif", "plate.overlay.png"]
    assert b'"annotations":[{' in expected["plate.coco.json"], "the test needs objects"
    for name in expected:
        assert written[name] == expected[name], name
