"""Memory: streamed training of a folder dataset whose decoded images and stacks (512 MB) exceed
the budget of :data:`GROWTH_BUDGET_MB` has about the peak memory of training on a small version
of the same dataset (``bench/stream_memory.py`` measures it, each run in a fresh process).
About 65 s on the 2-core machine while other jobs loaded it (4 runnable processes)."""

from __future__ import annotations

import os

import pytest

from bench.stream_memory import (decoded_megabytes, finish_measurement, start_measurement,
                                 write_folder_dataset)

pytestmark = pytest.mark.slow

SIDE = 1024
BIG, SMALL = 64, 4
GROWTH_BUDGET_MB = 0.25 * (decoded_megabytes(BIG, SIDE) - decoded_megabytes(SMALL, SIDE))
"""Largest allowed growth of the peak memory from the small to the big dataset (120 MB): a
quarter of the growth of the decoded data, which loading into memory would hold three times."""


def test_streamed_training_memory_does_not_grow_with_the_dataset(tmp_path) -> None:
    for name, count in (("small", SMALL), ("big", BIG)):
        write_folder_dataset(str(tmp_path / name), count, SIDE)
    # both runs at once (each process reports its own peak): half the wall time
    processes = {name: start_measurement(str(tmp_path / name), str(tmp_path / f"run-{name}"), "on")
                 for name in ("small", "big")}
    peaks = {}
    try:
        for name, process in processes.items():
            seconds, peaks[name], images = finish_measurement(process)
            # one test image; validation: 2 of the small pool of 3, 3 (the minimum) of the big
            n_val = {"small": 2, "big": 3}[name]
            assert images == {"small": SMALL, "big": BIG}[name] - 1 - n_val
            assert len(os.listdir(tmp_path / f"run-{name}" / "cache")) == images + n_val
    finally:  # after a failure, do not leave the other run behind
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    growth = peaks["big"] - peaks["small"]
    print(f"peak RSS: small {peaks['small']:.0f} MB, big {peaks['big']:.0f} MB "
          f"({decoded_megabytes(BIG, SIDE):.0f} MB decoded), growth {growth:.0f} MB")
    assert growth < GROWTH_BUDGET_MB, peaks
