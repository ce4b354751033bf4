"""Memory: tiled prediction of a 4096 x 4096 image stays under the documented peak
(:data:`bench.predict_memory.TILED_PEAK_LIMIT_MB`, measured as the predict.py process's maximum
resident set size)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.predict_memory import TILED_PEAK_LIMIT_MB, make_inputs

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tiled_prediction_of_4096_square_stays_under_the_documented_peak(tmp_path) -> None:
    image_path, run = make_inputs(str(tmp_path), 4096)
    # a helper process runs predict.py, so its RUSAGE_CHILDREN holds this one child only
    done = subprocess.run([sys.executable, "-m", "bench.predict_memory", "--measure", image_path,
                           run, "auto"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    seconds, peak_mb, shape = done.stdout.split()
    assert float(peak_mb) < TILED_PEAK_LIMIT_MB, f"peak {peak_mb} MB ({seconds} s)"
    assert shape.endswith("4096x4096")  # the whole image was predicted (the stack holds only
    # the slices its objects need: "4096x4096" for one, "2x4096x4096" for two)
