"""Tests of large-image prediction: lazy reading, streamed percentiles, strip-by-strip
stitching, chunked outputs (OME-Zarr, tiled BigTIFF) and what a killed run leaves behind.

The strip-by-strip path is compared with today's whole-image tiled prediction: with the fake
network of ``test_tiling`` (the image holds the ground-truth ids, objects land in layers that
differ from tile to tile) on an image whose long objects cross many tile borders, and with the
tiny trained model of ``conftest.tiny_run`` on a TIFF read lazily. "The same instances" means the
same set of object masks (ids and slices may differ: objects are numbered as they become final
and packed first fit into few slices).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("zarr")

from layernet.instances import masks_from_stack, stack_from_masks, validate_stack  # noqa: E402
from layernet.io import as_channels, read_label_stack  # noqa: E402
from layernet.label_store import (ZarrLabelWriter, read_label_store,  # noqa: E402
                                  write_label_stack_as, zarr_to_bigtiff)
from layernet.lazy_image import open_lazy_image, streamed_percentile_range  # noqa: E402
from layernet.normalize import percentile_range  # noqa: E402
from layernet.ordered_worker import OrderedWorker  # noqa: E402
from layernet.postprocess import postprocess  # noqa: E402
from layernet.big_prediction import (local_strip_instances, predict_strips,  # noqa: E402
                                     tile_rows)
from layernet.stitching import TileStitcher, _UnionFind  # noqa: E402
from layernet.stream_stitching import RowAssembler, StreamingStitcher  # noqa: E402
from layernet.tiles import tile_grid  # noqa: E402
from layernet.tiling import predict_tiled  # noqa: E402
from tests.test_tiling import FakeNetwork, _ellipse  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mask_set(stack):
    masks, _ = masks_from_stack(np.asarray(stack))
    return sorted(tuple(np.flatnonzero(mask)) for mask in masks)


def _objects(shape, seed):
    """Ellipses, some long and thin (crossing several 96 px tiles), many overlapping."""
    rng = np.random.default_rng(seed)
    masks = []
    for index in range(34):
        centre = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        radii = (rng.uniform(5, 10), rng.uniform(120, 200)) if index < 6 else (
            rng.uniform(6, 22), rng.uniform(6, 40))
        masks.append(_ellipse(shape, centre, radii, rng.uniform(0, np.pi)))
    return masks


def _strip_prediction(image, network, tiles, folder, min_size, batch=2, threaded=False):
    lazy = open_lazy_image(image)
    writer = ZarrLabelWriter(os.path.join(folder, "out.layers.zarr"), image.shape[:2], chunk=64)
    assembler = RowAssembler(image.shape[:2], writer, flush_rows=writer.chunk)
    with OrderedWorker(threaded=threaded) as worker:
        count = predict_strips(
            lazy, lambda strip: strip, network,
            lambda foreground, layering: postprocess(foreground, layering, min_size=0),
            tiles, assembler, min_size=min_size, batch_size=batch, worker=worker)
    path = writer.finish(assembler.slices, "zarr")
    return count, read_label_store(path), assembler


def test_strips_give_the_objects_of_whole_image_tiled_prediction(tmp_path):
    shape = (420, 380)
    objects = _objects(shape, 4)
    image = np.moveaxis(stack_from_masks(objects), 0, -1).astype(np.float32)
    tiles = tile_grid(shape, 96, 24)
    network = FakeNetwork()
    reference = predict_tiled(image, network, 96, 24, min_size=30, batch_size=2)
    network.layers_seen.clear()
    count, streamed, assembler = _strip_prediction(image, network, tiles, str(tmp_path), 30,
                                                   threaded=True)
    validate_stack(streamed)
    expected = _mask_set(reference)
    assert len(expected) >= 25 and count == len(expected)
    crossing = [mask for mask in masks_from_stack(reference)[0]
                if sum(mask[tile.slices].any() for tile in tiles) >= 4]
    assert len(crossing) >= 4, "the test needs objects spanning many tiles"
    assert any(len(layers) > 1 for layers in network.layers_seen.values())
    assert _mask_set(streamed) == expected
    # first-fit packing: as few slices as the overlaps need, not the network's 8
    assert streamed.shape[0] < reference.shape[0] and all(layer.any() for layer in streamed)


def test_rows_are_written_as_they_are_finished(tmp_path):
    # A tall image of small objects: the band of rows held at once stays near two tile rows.
    shape = (1500, 160)
    rng = np.random.default_rng(5)
    objects = [_ellipse(shape, (rng.uniform(0, 1500), rng.uniform(0, 160)),
                        (rng.uniform(5, 15), rng.uniform(5, 20)), rng.uniform(0, np.pi))
               for _ in range(60)]
    image = np.moveaxis(stack_from_masks(objects), 0, -1).astype(np.float32)
    tiles = tile_grid(shape, 96, 24)
    reference = predict_tiled(image, FakeNetwork(), 96, 24, min_size=30)
    count, streamed, assembler = _strip_prediction(image, FakeNetwork(), tiles, str(tmp_path), 30)
    assert count >= 40 and _mask_set(streamed) == _mask_set(reference)
    assert assembler.peak_rows <= 64 + 3 * 96 < shape[0] / 4  # a chunk plus the open strips


def test_streamed_percentiles_are_those_of_the_whole_image():
    rng = np.random.default_rng(1)
    for dtype, shape in ((np.uint8, (37, 29)), (np.uint16, (50, 41, 2)), (np.int16, (23, 64))):
        info = np.iinfo(dtype)
        image = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
        image[:3] //= 5  # not uniform
        for low, high in ((1.0, 99.8), (0.0, 100.0), (0.3, 55.5)):
            lazy = open_lazy_image(image)
            streamed = streamed_percentile_range(lazy, low, high, strip_rows=7)
            whole = percentile_range(as_channels(image), low, high)
            assert np.array_equal(streamed[0], whole[0]) and np.array_equal(streamed[1], whole[1])
    floats = rng.random((40, 30)).astype(np.float32)  # sampled only above SAMPLE_PIXELS
    assert np.array_equal(streamed_percentile_range(open_lazy_image(floats), 1, 99.8)[1],
                          percentile_range(as_channels(floats), 1, 99.8)[1])


def test_tiff_and_ome_zarr_inputs_read_lazily(tmp_path):
    import tifffile
    import zarr

    image = np.random.default_rng(2).integers(0, 4000, (130, 150, 3)).astype(np.uint16)
    path = str(tmp_path / "tiled.tif")
    tifffile.imwrite(path, image, tile=(64, 64), bigtiff=True, photometric="rgb")
    lazy = open_lazy_image(path)
    assert lazy.shape == (130, 150, 3)
    np.testing.assert_array_equal(lazy.strip(20, 90), image[20:90].astype(np.float32))
    group = zarr.open_group(str(tmp_path / "in.zarr"), mode="w", zarr_format=2)
    group.create_array("0", data=np.moveaxis(image, -1, 0)[None], chunks=(1, 1, 64, 64))
    group.attrs["multiscales"] = [{"version": "0.4", "datasets": [{"path": "0"}], "axes": [
        {"name": "t", "type": "time"}, {"name": "c", "type": "channel"},
        {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]}]
    lazy = open_lazy_image(str(tmp_path / "in.zarr"))
    lazy.select_channels(1, 1)
    np.testing.assert_array_equal(lazy.strip(5, 17), image[5:17, :, 1:2].astype(np.float32))
    plain = str(tmp_path / "plain.tif")  # tifffile writes one strip: memory-mapped, not decoded
    tifffile.imwrite(plain, image[..., 0])
    assert isinstance(open_lazy_image(plain).array, np.memmap)
    np.testing.assert_array_equal(open_lazy_image(plain).strip(7, 9)[..., 0], image[7:9, :, 0])
    tifffile.imwrite(plain, np.moveaxis(image, -1, 0), photometric="minisblack")  # 3 pages
    with pytest.raises(ValueError, match="plain.tif: .*a stack of planes is not one image"):
        open_lazy_image(plain)
    with pytest.raises(ValueError, match="plain.png: not a TIFF"):
        (tmp_path / "plain.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 20)
        open_lazy_image(str(tmp_path / "plain.png"))


def test_bigtiff_and_zarr_outputs_round_trip(tmp_path):
    import tifffile

    stack = stack_from_masks(_objects((150, 170), 7), dtype=np.uint32)
    tiff = str(tmp_path / "a.layers.tif")
    write_label_stack_as(tiff, stack, "bigtiff")
    with tifffile.TiffFile(tiff) as handle:
        assert handle.is_bigtiff and handle.pages[0].is_tiled
        assert handle.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    np.testing.assert_array_equal(read_label_stack(tiff), stack)
    folder = str(tmp_path / "a.layers.zarr")
    write_label_stack_as(folder, stack, "zarr")
    np.testing.assert_array_equal(read_label_store(folder), stack)
    np.testing.assert_array_equal(read_label_stack(folder), stack)
    import zarr

    group = zarr.open_group(folder, mode="r")
    assert group.attrs["multiscales"][0]["version"] == "0.4" and "image-label" in group.attrs
    assert group["0"].metadata.zarr_format == 2
    assert not os.path.exists(folder + ".partial")


def test_a_killed_run_leaves_no_complete_looking_output(tmp_path):
    # A child process writes rows into a zarr store and is killed (SIGKILL) midway.
    script = textwrap.dedent(f"""
        import sys, numpy as np
        from layernet.label_store import ZarrLabelWriter
        writer = ZarrLabelWriter({str(tmp_path / "x.layers.zarr")!r}, (4096, 512), chunk=64)
        for top in range(0, 4096, 64):
            writer.write_rows(top, [np.full((64, 512), top + 1, np.uint32)])
            if top == 1024:
                print("half", flush=True)
                sys.stdin.readline()
        writer.finish(1, "zarr")
    """)
    # run from the checkout, so that `python -c` imports its layernet first
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert child.stdout.readline().strip() == "half"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert sorted(os.listdir(tmp_path)) == ["x.layers.zarr.partial"]
    with pytest.raises(ValueError, match="unfinished"):
        read_label_store(str(tmp_path / "x.layers.zarr.partial"))
    # A BigTIFF is written under a temporary name: an error midway leaves nothing named .tif.
    class Broken:
        shape, dtype = (2, 600, 600), np.dtype(np.uint32)

        def __getitem__(self, index):
            if index[0] == 1:
                raise OSError("disk gone")
            return np.zeros((512, 600), np.uint32)[: len(range(600)[index[1]])]

    with pytest.raises(OSError, match="disk gone"):
        zarr_to_bigtiff(Broken(), str(tmp_path / "y.layers.tif"))
    assert sorted(os.listdir(tmp_path)) == ["x.layers.zarr.partial"]


def test_written_stacks_hold_only_the_slices_they_need(tmp_path):
    from layernet.export import write_prediction
    from layernet.instances import pack_stack

    stack = np.zeros((8, 40, 50), np.uint16)
    stack[2, 5:20, 5:20] = 1
    stack[6, 10:30, 10:30] = 2  # overlaps 1
    stack[7, 30:38, 30:45] = 3  # overlaps nothing
    packed = pack_stack(stack)
    assert packed.shape[0] == 2 and packed.dtype == stack.dtype
    assert _mask_set(packed) == _mask_set(stack)
    assert set(np.unique(packed[0])) == {0, 1, 3} and set(np.unique(packed[1])) == {0, 2}
    assert pack_stack(np.zeros((8, 4, 4), np.uint16)).shape == (1, 4, 4)
    write_prediction(str(tmp_path / "p"), stack, overlay=False)
    np.testing.assert_array_equal(read_label_stack(str(tmp_path / "p.layers.tif")), packed)


def test_predict_py_in_strips_gives_the_objects_of_whole_image_prediction(tiny_run, tmp_path):
    import json

    import roifile
    import tifffile

    from bench.predict import synthetic_mosaic
    from layernet_commands import predict

    raw, _ = synthetic_mosaic(384, block_size=128, seed=3)
    path = str(tmp_path / "plate.tif")
    tifffile.imwrite(path, (raw[..., 0] * 150).astype(np.uint16), tile=(64, 64), bigtiff=True)
    common = [path, "--model", tiny_run, "--quiet", "--tile-size", "96", "--min-size", "20",
              "--save-coco", "--save-rois", "--no-overlay"]
    assert predict.main(common + ["--out", str(tmp_path / "whole"), "--strips", "never"]) == 0
    assert predict.main(common + ["--out", str(tmp_path / "strips"), "--strips", "always",
                                  "--output-format", "zarr"]) == 0
    whole = read_label_stack(str(tmp_path / "whole" / "plate.layers.tif"))
    strips = read_label_stack(str(tmp_path / "strips" / "plate.layers.zarr"))
    assert len(_mask_set(whole)) >= 5, "the tiny model must find objects for this test"
    assert _mask_set(strips) == _mask_set(whole)
    masks, polygons = [], []  # COCO RLEs and ROI outlines: exact, the same objects
    for name in ("whole", "strips"):
        coco = json.loads((tmp_path / name / "plate.coco.json").read_text())
        assert len(coco["annotations"]) == len(_mask_set(whole))
        assert coco["images"][0]["height"] == 384
        masks.append(sorted(item["segmentation"]["counts"] for item in coco["annotations"]))
        rois = roifile.roiread(str(tmp_path / name / "plate.rois.zip"))
        polygons.append(sorted(roi.coordinates().round(3).tobytes() for roi in rois))
    assert masks[0] == masks[1] and polygons[0] == polygons[1]
    # image-sized outputs per object are refused in strips, on one line, writing nothing
    assert predict.main(common + ["--out", str(tmp_path / "masks"), "--strips", "always",
                                  "--save-masks"]) == 1
    assert not os.listdir(tmp_path / "masks")


def test_zarr_images_are_inputs_and_zarr_outputs_are_not(tmp_path):
    import zarr

    from layernet_commands.predict import collect_inputs, output_prefix

    zarr.open_array(str(tmp_path / "slide.ome.zarr"), mode="w", shape=(8, 8), dtype="uint8")
    zarr.open_array(str(tmp_path / "old.layers.zarr"), mode="w", shape=(1, 8, 8), dtype="uint8")
    (tmp_path / "a.png").write_bytes(b"")
    files, problems = collect_inputs([str(tmp_path), str(tmp_path / "slide.ome.zarr") + "/"])
    assert sorted(os.path.basename(path.rstrip("/")) for path in files) == [
        "a.png", "slide.ome.zarr"] and not problems
    assert output_prefix(str(tmp_path / "slide.ome.zarr") + "/", "out") == "out/slide.ome"


def test_overlay_drawn_in_bands_is_the_overlay_drawn_whole():
    from layernet.big_prediction import reduced_overlay
    from layernet.viz import display_image, outline_overlay

    stack = stack_from_masks(_objects((150, 170), 9), dtype=np.uint32)
    image = np.random.default_rng(3).integers(0, 3000, (150, 170)).astype(np.uint16)
    picture, step = reduced_overlay(open_lazy_image(image), stack, side=200, band=16)
    assert step == 1
    np.testing.assert_array_equal(picture, outline_overlay(display_image(image), stack))
    small, step = reduced_overlay(open_lazy_image(image), stack, side=60, band=7)
    assert step == 3 and small.shape == (50, 57, 3)
    np.testing.assert_array_equal(small, outline_overlay(display_image(image[::3, ::3]),
                                                         stack[:, ::3, ::3]))


def test_predict_py_killed_midway_leaves_only_a_partial_folder(tiny_run, tmp_path):
    import time

    import tifffile

    from bench.predict import synthetic_mosaic

    raw, _ = synthetic_mosaic(1024, block_size=256, seed=6)
    path = str(tmp_path / "slide.tif")
    tifffile.imwrite(path, (raw[..., 0] * 150).astype(np.uint16), tile=(128, 128))
    out = tmp_path / "out"
    child = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "predict.py"), path, "--model", tiny_run, "--out",
         str(out), "--strips", "always", "--tile-size", "64", "--save-coco", "--quiet"],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    partial = out / "slide.layers.zarr.partial"  # made once the tiles start
    deadline = time.monotonic() + 120
    while not partial.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # into the strips
    running = child.poll() is None
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert running and partial.exists(), "predict.py must be killed while predicting strips"
    assert sorted(os.listdir(out)) == ["slide.layers.zarr.partial"]


def test_large_allocations_are_mapped_on_linux():
    import sys

    from layernet.big_prediction import map_large_allocations

    # a real mallopt call: it succeeds on glibc (the CI machines), is refused elsewhere
    assert map_large_allocations() == sys.platform.startswith("linux")


def test_tile_stacks_keep_their_objects_in_fewer_slices():
    from layernet.big_prediction import small_tile_stack
    from layernet.instances import pack_stack

    def objects(stack):
        return {int(i): frozenset(np.flatnonzero((stack == i).any(axis=0)).tolist())
                for i in np.unique(stack) if i > 0}

    apart = np.zeros((8, 6, 7), np.int32)
    apart[0, 0:2, 0:2], apart[3, 3:5, 3:6], apart[7, 0:1, 5:7] = 1, 2, 3
    small = small_tile_stack(apart)
    assert small.shape == (1, 6, 7) and small.dtype == np.uint16
    assert objects(small) == objects(apart)

    crossing = apart.copy()
    crossing[5, 1:4, 1:4] = 4                       # overlaps objects 1 and 2
    small = small_tile_stack(crossing)
    assert small.shape[0] == 2 and objects(small) == objects(crossing)
    np.testing.assert_array_equal(small, pack_stack(crossing))

    wide = np.zeros((2, 3, 3), np.int64)
    wide[0, 0, 0], wide[1, 0, 0] = 70000, 70001     # ids beyond uint16 keep their dtype
    assert small_tile_stack(wide).dtype == np.int64
    assert small_tile_stack(np.zeros((8, 4, 4), np.int32)).shape == (1, 4, 4)


class _BlockRecorder:
    """A RowWriter that keeps the label stack in memory and records every block it receives."""

    def __init__(self, shape):
        self.stack = np.zeros((0,) + tuple(shape), np.uint32)
        self.blocks = []

    def write_block(self, top, left, layers):
        if len(layers) > len(self.stack):
            grown = np.zeros((len(layers),) + self.stack.shape[1:], np.uint32)
            grown[:len(self.stack)] = self.stack
            self.stack = grown
        rows, columns = layers[0].shape
        self.blocks.append((top, left, rows, columns))
        for index, layer in enumerate(layers):
            self.stack[index, top:top + rows, left:left + columns] = layer


def _dense_first_fit(shape, objects):
    """Slow reference: every object, in order, into the first image-sized slice where it
    overlaps nothing (ids 1, 2, ... in placement order)."""
    from layernet.instances import first_free_slice

    layers = []
    for number, ((top, left), mask) in enumerate(objects, start=1):
        window = (slice(top, top + mask.shape[0]), slice(left, left + mask.shape[1]))
        index = first_free_slice(layers, window, mask)
        if index is None:
            layers.append(np.zeros(shape, np.uint32))
            index = len(layers) - 1
        layers[index][window][mask] = number
    return np.stack(layers) if layers else np.zeros((1,) + shape, np.uint32)


def test_row_assembler_places_first_fit_like_a_dense_stack():
    # Random overlapping blobs of many sizes (some taller than a flush band, some wider than a
    # written block), placed in order of their top row as the stitcher hands them out and
    # flushed in between; the blocks written add up to the dense first-fit stack.
    rng = np.random.default_rng(11)
    shape = (300, 250)
    objects = []
    for _ in range(120):
        height, width = int(rng.integers(1, 90)), int(rng.integers(1, 120))
        top, left = int(rng.integers(0, shape[0] - height)), int(rng.integers(0, shape[1] - width))
        mask = rng.random((height, width)) < 0.7
        mask[0, int(np.argmax(mask[0]))] = True  # the top row holds a pixel
        objects.append(((top, left), mask))
    objects.sort(key=lambda item: item[0][0])
    reference = _dense_first_fit(shape, objects)
    writer = _BlockRecorder(shape)
    assembler = RowAssembler(shape, writer, flush_rows=16, block_columns=40)
    numbers, seen = [], set()
    for position, (top_left, mask) in enumerate(objects):
        numbers.append(assembler.place(top_left, mask))
        if position % 7 == 6:  # no later object starts above the next one's top row
            assembler.flush(objects[position + 1][0][0] if position + 1 < len(objects)
                            else shape[0])
    assembler.flush(shape[0])
    assert numbers == list(range(1, len(objects) + 1))
    assert assembler.slices == len(reference) >= 3
    np.testing.assert_array_equal(writer.stack, reference)
    # every pixel written exactly once, in blocks of at most 48 columns (40 rounded up to 16s)
    coverage = np.zeros(shape, int)
    for top, left, rows, columns in writer.blocks:
        assert columns <= 48 and (top % 16 == 0) and (left % 48 == 0)
        coverage[top:top + rows, left:left + columns] += 1
    assert (coverage == 1).all()
    with pytest.raises(RuntimeError, match="above the flushed rows"):
        assembler.place((10, 10), np.ones((2, 2), bool))


def test_row_assembler_memory_follows_the_objects_not_the_width():
    # Three small objects on an image 200,000 pixels wide: what waits to be written is their
    # masks (a band of rows of ids would be 200 x 200,000 x 4 bytes = 160 MB per slice).
    shape = (200, 200_000)
    writer = _BlockRecorder((1, 1))
    writer.write_block = lambda top, left, layers: writer.blocks.append(
        (top, left, [(int(layer.max()), layer.shape) for layer in layers]))
    assembler = RowAssembler(shape, writer, flush_rows=64, block_columns=65536)
    for left in (5, 100_000, 199_990):
        assembler.place((30, left), np.ones((120, 8), bool))
    assembler.place((40, 100_004), np.ones((20, 20), bool))  # overlaps the middle one
    assert assembler.peak_pixels == 3 * 120 * 8 + 400 and assembler.slices == 2
    assembler.flush(64)  # rows 0-63 written, the objects' lower rows still wait
    assert assembler.peak_pixels == 3 * 120 * 8 + 400
    assert sum(item.mask.size for item in assembler._pending) == 3 * 86 * 8
    assembler.flush(shape[0])
    assert assembler._pending == [] and assembler.top == shape[0]
    ids = {value for _, _, layers in writer.blocks for value, _ in layers}
    assert ids == {0, 1, 2, 3, 4}


def _reference_sets(size, unions):
    """Labels of the sets of ``0..size-1`` after ``unions``, by repeated relabelling (slow)."""
    labels = list(range(size))
    for a, b in unions:
        old, new = max(labels[a], labels[b]), min(labels[a], labels[b])
        labels = [new if label == old else label for label in labels]
    return labels


def test_union_find_trim_keeps_the_sets_of_the_kept_fragments():
    rng = np.random.default_rng(3)
    for _ in range(30):
        union = _UnionFind()
        first = union.add(60)
        assert first == 0
        before = [tuple(int(v) for v in rng.integers(0, 60, 2)) for _ in range(40)]
        for a, b in before:
            union.union(a, b)
        keep = {int(v) for v in rng.choice(60, 15, replace=False)}
        union.trim(keep)
        assert set(union.parent) <= keep  # the forgotten fragments take no memory
        assert union.add(30) == 60 and union.size == 90
        alive = sorted(keep) + list(range(60, 90))
        after = [(int(rng.choice(alive)), int(rng.choice(alive))) for _ in range(25)]
        for a, b in after:
            union.union(a, b)
        labels = _reference_sets(90, before + after)
        for a in alive:
            for b in alive:
                assert (union.find(a) == union.find(b)) == (labels[a] == labels[b])


def test_streaming_stitcher_forgets_the_fragments_of_closed_tiles():
    # A tall image of objects crossing tile borders, stitched strip by strip: the union-find holds
    # only fragments of open tiles and of objects still waiting, and the objects are those of
    # stitching the whole image at once.
    shape = (1800, 200)
    rng = np.random.default_rng(8)
    masks = [_ellipse(shape, (rng.uniform(0, 1800), rng.uniform(0, 200)),
                      (rng.uniform(8, 30), rng.uniform(8, 60)), rng.uniform(0, np.pi))
             for _ in range(90)]
    stack = stack_from_masks(masks)
    tiles = tile_grid(shape, 96, 24)
    whole, streaming = TileStitcher(shape, tiles), StreamingStitcher(shape, tiles)
    popped, largest = [], 0
    for row in tile_rows(tiles):
        for tile in row:
            whole.add(tile.index, stack[(slice(None),) + tile.slices])
            streaming.add(tile.index, stack[(slice(None),) + tile.slices])
        popped += streaming.pop_final()
        allowed = ({f for t in streaming._open for f in streaming._fragments[t]}
                   | {part.fragment for part in streaming._parts})
        assert set(streaming._union.parent) <= allowed
        largest = max(largest, len(streaming._union.parent))
    assert streaming._parts == [] and not streaming._open
    assert 0 < 4 * largest < len(whole._union.parent)  # untrimmed, it would keep them all
    expected = _mask_set(whole.finish())
    found = []
    for _, _, (top, left), mask in popped:
        full = np.zeros(shape, bool)
        full[top:top + mask.shape[0], left:left + mask.shape[1]] = mask
        found.append(tuple(np.flatnonzero(full)))
    assert len(expected) >= 60 and sorted(found) == expected


def test_strips_are_read_once_per_tile_row_in_the_files_pixel_type():
    # The strip of a tile row is read once (not once per batch), as the file's uint8 pixels;
    # each batch is converted to float32 on its own, so no float32 copy of the strip is held.
    image = np.zeros((300, 1000, 1), np.uint8)
    image[40:60, 100:900] = 200
    lazy = open_lazy_image(image)
    reads = []
    original = lazy.raw
    lazy.raw = lambda *args, **kwargs: reads.append(original(*args, **kwargs)) or reads[-1]
    tiles = tile_grid(image.shape[:2], 128, 16)
    seen = []

    def maps(batch):
        seen.append(batch.shape)
        return batch[..., 0] / 255.0, np.stack([batch[..., 0] / 255.0] * 2, axis=-1)

    groups = list(local_strip_instances(
        lazy, lambda batch: batch, maps,
        lambda foreground, layering: (foreground > 0.5)[None].astype(np.uint16), tiles,
        batch_size=3))
    rows = len({tile.rect[0] for tile in tiles})
    assert len(reads) == rows and all(read.dtype == np.uint8 for read in reads)
    assert all(read.shape[1] == 1000 for read in reads)
    assert len(groups) == len(seen) == sum(-(-len(row) // 3) for row in tile_rows(tiles))
    assert [tile.index for group in groups for tile, _ in group] == [tile.index for tile in tiles]


def test_big_image_bench_measures_wide_images(tmp_path, capsys):
    import argparse

    import tifffile

    from bench.big_image import main, parse_size, write_synthetic_bigtiff

    assert parse_size("2048") == (2048, 2048) and parse_size("300X700") == (300, 700)
    for bad in ("0", "12x", "axb", "3x4x5"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_size(bad)
    path = str(tmp_path / "wide.tif")
    write_synthetic_bigtiff(path, (300, 700), "worms")
    with tifffile.TiffFile(path) as tiff:
        assert tiff.pages[0].shape == (300, 700) and tiff.pages[0].is_tiled
        assert tiff.asarray().std() > 0
    assert main(["--sizes", "200x520", "--no-overlay", "--out", str(tmp_path / "bench")]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 200")]
    assert len(rows) == 1 and rows[0].split("|")[1].strip() == "200 x 520"
    assert rows[0].split("|")[2].strip() == "104,000" and float(rows[0].split("|")[4]) > 0
