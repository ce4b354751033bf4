"""bench/predict_breakdown.py: the stages of one prediction, timed on image files."""

from __future__ import annotations

import numpy as np

from bench import predict_breakdown
from bench.predict_breakdown import as_file_dtype, central_crop


def test_central_crop_and_file_dtype():
    image = np.arange(6 * 8, dtype=np.float32).reshape(6, 8, 1)
    crop = central_crop(image, 4)
    assert crop.shape == (4, 4, 1)
    np.testing.assert_array_equal(crop[..., 0], image[1:5, 2:6, 0])
    assert central_crop(image, 10).shape == (6, 8, 1)  # smaller axes are kept whole
    assert as_file_dtype(image).dtype == np.uint8
    assert as_file_dtype(image * 1000).dtype == np.uint16
    assert as_file_dtype(image + 0.5).dtype == np.float32
    assert as_file_dtype(image - 1).dtype == np.float32
    np.testing.assert_array_equal(as_file_dtype(image * 1000), image * 1000)


def test_stages_give_the_library_result(tmp_path):
    """Timed stage by stage, the prediction is the one predict_image makes (same objects)."""
    from layernet.batch_predict import load_predictor
    from layernet.io import as_channels, read_image, write_image_atomic
    from layernet.instances import num_objects
    from layernet.tiling import predict_image
    from datasets import load_dataset

    sample = load_dataset("synthetic", split="test", seed=0, size=128, count=2, kind="worms")[0]
    path = str(tmp_path / "image.tif")
    write_image_atomic(path, as_file_dtype(sample.image[..., 0] * 255))
    predictor = load_predictor("worms", config_changes={"min_size": 20})
    seconds, count = predict_breakdown.layernet_stages(predictor, path, str(tmp_path / "out"))
    assert set(seconds) == set(predict_breakdown.STAGES)
    assert all(value >= 0 for value in seconds.values())
    assert (tmp_path / "out.layers.tif").exists() and (tmp_path / "out-overlay.overlay.png").exists()
    raw = as_channels(read_image(path), expected_channels=1)
    assert count == num_objects(predict_image(predictor, raw).stack)


def test_main_prints_one_row_per_stage(capsys):
    assert predict_breakdown.main(["--model", "worms", "--data", "synthetic", "--data-option",
                                   "size=96", "--data-option", "count=2", "--split", "test",
                                   "--side", "64", "--repeats", "1",
                                   "--precision", "float32"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0][2:] for row in rows[1:1 + len(predict_breakdown.STAGES)]] == list(
        predict_breakdown.STAGES)
    total = next(row for row in rows if "end to end (sum)" in row)
    stages = [float(row.split(" | ")[1].strip(" |")) for row in rows[1:7]]
    assert abs(float(total.split("**")[3]) - sum(stages)) <= 1.0
    assert "library end to end" in out
