"""Dataset loaders on small fixtures generated here: CCDB6843, folder datasets, BBBC010 download
extraction and layout rules, OCC2014 .mat variants (v5 and v7.3/HDF5), and bad-data errors."""

from __future__ import annotations

import logging
import os
import zipfile

import cv2
import h5py
import numpy as np
import pytest
import scipy.io
import tifffile

from datasets import bbbc010, ccdb6843, folder, load_dataset, occ2014
from datasets.common import DatasetError
from datasets.summary import format_summary, greedy_layer_count, main, summarize
from layernet.instances import masks_from_stack
from layernet.io import ImageReadError


def _disk(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def _object_masks(sample):
    return list(masks_from_stack(sample.stack)[0])


def _same_masks(found, expected):
    """Whether two lists of boolean masks are equal up to order."""
    key = lambda m: tuple(np.flatnonzero(m)[:5])  # noqa: E731
    return len(found) == len(expected) and all(
        np.array_equal(a, b) for a, b in zip(sorted(found, key=key), sorted(expected, key=key)))


# ---------------------------------------------------------------------------------------------
# CCDB6843

def _make_ccdb(root, keys=("F01_120", "F02_007", "F04_001", "F04_002")):
    shape = (60, 80)
    img_dir, seg_dir = root / "MP6843_img_full", root / "MP6843_seg"
    img_dir.mkdir(parents=True)
    seg_dir.mkdir()
    expected = {}
    for n, key in enumerate(keys):
        image = np.full(shape, 1000 + n, np.uint16)
        tifffile.imwrite(img_dir / f"{key}w1.TIF", image)
        tifffile.imwrite(img_dir / f"{key}w2.TIF", image + 7)  # channel 2: ignored
        a, b = _disk(shape, (15, 15), 8), _disk(shape, (40, 55), 9)
        tiny = _disk(shape, (50, 10), 3)  # 29 px < 100: dropped
        gt1 = ((a | b | tiny) * 255).astype(np.uint8)
        tifffile.imwrite(seg_dir / f"{key}_GT_01.tif", gt1)
        masks = [a, b]
        if n % 2 == 0:  # a cell overlapping ``a``, in the second file
            c = _disk(shape, (20, 25), 8)
            tifffile.imwrite(seg_dir / f"{key}_GT_02.TIF", c.astype(np.uint8))
            masks.append(c)
        expected[key] = masks
    return expected


def test_ccdb6843_objects_and_splits(tmp_path):
    expected = _make_ccdb(tmp_path)
    samples = ccdb6843.load(str(tmp_path), split="all", size=None)
    assert [s.name for s in samples] == ["F01_120", "F02_007", "F04_001", "F04_002"]
    for sample in samples:
        assert sample.image.shape == (60, 80, 1) and sample.image.dtype == np.float32
        assert sample.meta["image_path"].endswith("w1.TIF")
        assert _same_masks(_object_masks(sample), expected[sample.name])
    assert samples[0].stack.shape[0] == 2  # GT_02 cell overlaps a GT_01 cell
    test = ccdb6843.load(str(tmp_path), split="test")
    assert [s.name for s in test] == ["F04_001", "F04_002"]
    assert test[0].image.shape == (448, 448, 1) and test[0].stack.shape[1:] == (448, 448)
    train = ccdb6843.load(str(tmp_path), split="train", limit=1)
    assert train[0].name in ("F01_120", "F02_007")


def test_ccdb6843_label_image_keeps_touching_cells_apart():
    gt = np.zeros((40, 40), np.uint16)
    gt[5:20, 5:20] = 3
    gt[5:20, 20:35] = 9  # touches id 3
    gt[30:33, 30:33] = 4  # 9 px: dropped
    objects = ccdb6843.objects_from_ground_truth(gt)
    assert len(objects) == 2
    assert objects[0].sum() == 225 and objects[1].sum() == 225
    merged = ccdb6843.objects_from_ground_truth((gt > 0).astype(np.uint8))
    assert len(merged) == 1 and merged[0].sum() == 450  # binary: connected components
    diagonal = np.zeros((40, 40), np.uint8)
    diagonal[0:12, 0:12] = 1
    diagonal[12:24, 12:24] = 1  # touches only at a corner: one 8-connected component
    assert len(ccdb6843.objects_from_ground_truth(diagonal)) == 1


def test_ccdb6843_errors(tmp_path, caplog):
    _make_ccdb(tmp_path, keys=("F01_120", "F02_007"))
    os.remove(tmp_path / "MP6843_seg" / "F02_007_GT_01.tif")
    with caplog.at_level(logging.WARNING):
        samples = ccdb6843.load(str(tmp_path), split="all", size=None)
    assert [s.name for s in samples] == ["F01_120"]
    assert "F02_007" in caplog.text
    tifffile.imwrite(tmp_path / "MP6843_seg" / "F01_120_GT_01.tif", np.zeros((10, 10), np.uint8))
    with pytest.raises(DatasetError, match="F01_120_GT_01.tif: ground truth shape"):
        ccdb6843.load(str(tmp_path), split="all")
    with pytest.raises(DatasetError, match="MP6843_img_full: CCDB6843 image folder not found"):
        ccdb6843.load(str(tmp_path / "nowhere"), split="all")


# ---------------------------------------------------------------------------------------------
# folder datasets

SHAPE = (32, 40)


def _objects():
    return [_disk(SHAPE, (10, 10), 6), _disk(SHAPE, (14, 18), 6), _disk(SHAPE, (24, 30), 5)]


def _write_image(path, value=100):
    cv2.imwrite(str(path), np.full(SHAPE, value, np.uint8))


def _make_folder(root, stems=("a", "b", "c", "d", "e")):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    objects = _objects()
    for n, stem in enumerate(stems):
        _write_image(root / "images" / f"{stem}.png", 10 * n)
        kind = n % 4
        if kind == 0:  # (a) label image, no overlap (first and third object)
            labels = np.zeros(SHAPE, np.uint16)
            labels[objects[0]] = 5
            labels[objects[2]] = 2
            tifffile.imwrite(root / "masks" / f"{stem}.tif", labels)
        elif kind == 1:  # (b) folder of binary masks, overlapping
            (root / "masks" / stem).mkdir()
            for k, mask in enumerate(objects):
                cv2.imwrite(str(root / "masks" / stem / f"cell{k}.png"), mask.astype(np.uint8) * 255)
        elif kind == 2:  # (c) stack of binary masks
            tifffile.imwrite(root / "masks" / f"{stem}.tif",
                             np.stack(objects).astype(np.uint8), photometric="minisblack")
        else:  # (c) label stack: objects 0 and 2 in slice 0, object 1 in slice 1
            stack = np.zeros((2,) + SHAPE, np.uint16)
            stack[0][objects[0]] = 1
            stack[0][objects[2]] = 3
            stack[1][objects[1]] = 2
            tifffile.imwrite(root / "masks" / f"{stem}.tif", stack, photometric="minisblack")


def test_folder_mask_forms(tmp_path):
    _make_folder(tmp_path)
    samples = {s.name: s for s in folder.load(str(tmp_path), split="all")}
    objects = _objects()
    assert sorted(samples) == ["a", "b", "c", "d", "e"]
    assert _same_masks(_object_masks(samples["a"]), [objects[0], objects[2]])
    for name in ("b", "c", "d"):
        assert _same_masks(_object_masks(samples[name]), objects), name
        assert samples[name].stack.shape[0] == 2  # objects 0 and 1 overlap
    assert samples["b"].image.shape == SHAPE + (1,)
    assert samples["b"].image[0, 0, 0] == 10.0  # raw intensities
    resized = folder.load(str(tmp_path), split="all", size=64)
    assert all(s.image.shape == (64, 64, 1) and s.stack.shape[1:] == (64, 64) for s in resized)


def test_folder_splits(tmp_path):
    _make_folder(tmp_path, stems=[f"img{n:02d}" for n in range(20)])
    test = [s.name for s in folder.load(str(tmp_path), split="test", seed=0)]
    assert len(test) == 4
    assert [s.name for s in folder.load(str(tmp_path), split="test", seed=5)] == test  # fixed
    for seed in (0, 1):
        train = {s.name for s in folder.load(str(tmp_path), split="train", seed=seed)}
        val = {s.name for s in folder.load(str(tmp_path), split="val", seed=seed)}
        assert len(train) == 13 and len(val) == 3  # 10 % of 16 is 2: the minimum is 3
        assert not train & val and not (train | val) & set(test)
    separate = tmp_path / "with_test"
    _make_folder(separate, stems=["a", "b", "c"])
    _make_folder(separate / "test", stems=["t1", "t2"])
    assert [s.name for s in folder.load(str(separate), split="test")] == ["t1", "t2"]
    assert [s.name for s in folder.load(str(separate), split="trainval")] == ["a", "b", "c"]
    assert load_dataset("folder", str(separate), "test")[0].name == "t1"


def test_folder_bad_data(tmp_path, caplog):
    root = tmp_path / "d"
    _make_folder(root, stems=["a", "b"])
    # image without masks, masks without image: warnings, skipped
    _write_image(root / "images" / "lonely.png")
    cv2.imwrite(str(root / "masks" / "orphan.png"), np.zeros(SHAPE, np.uint8))
    with caplog.at_level(logging.WARNING):
        names = sorted(s.name for s in folder.load(str(root), split="all"))
    assert names == ["a", "b"]
    assert "lonely.png" in caplog.text and "orphan.png" in caplog.text
    # an empty mask in a mask folder: warning, dropped
    cv2.imwrite(str(root / "masks" / "b" / "zz_empty.png"), np.zeros(SHAPE, np.uint8))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        sample = [s for s in folder.load(str(root), split="all") if s.name == "b"][0]
    assert sample.stack.max() == 3 and "zz_empty.png: empty mask" in caplog.text
    # a "binary" mask that is not binary
    cv2.imwrite(str(root / "masks" / "b" / "zz_labels.png"),
                (_objects()[0] * 1 + _objects()[2] * 2).astype(np.uint8))
    with pytest.raises(ImageReadError, match="zz_labels.png: not a binary mask"):
        folder.load(str(root), split="all")
    os.remove(root / "masks" / "b" / "zz_labels.png")
    # mask size differs from image
    cv2.imwrite(str(root / "masks" / "b" / "zz_small.png"), np.ones((8, 8), np.uint8))
    with pytest.raises(DatasetError, match="zz_small.png: mask size"):
        folder.load(str(root), split="all")
    os.remove(root / "masks" / "b" / "zz_small.png")
    tifffile.imwrite(root / "masks" / "a.tif", np.ones((8, 8), np.uint8))
    with pytest.raises(DatasetError, match="a.tif: mask size"):
        folder.load(str(root), split="all")
    # duplicate stems
    _write_image(root / "images" / "b.tif")
    with pytest.raises(DatasetError, match="duplicate stem 'b'"):
        folder.load(str(root), split="all")
    # no pairs at all
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    with pytest.raises(DatasetError, match="empty: no image with masks"):
        folder.load(str(empty), split="all")
    with pytest.raises(DatasetError, match="images: images folder not found"):
        folder.load(str(tmp_path), split="all")


# ---------------------------------------------------------------------------------------------
# BBBC010: layout rules and download/extraction

BBBC_PREFIX = "1649_1109_0003_Amp5-1_B_20070424"


def _bbbc_files(wells, missing_image=()):
    """name -> bytes of a small official-layout BBBC010 copy (520x696 images)."""
    import io as _io

    files = {}
    for n, well in enumerate(wells):
        worm_a = np.zeros((520, 696), bool)
        worm_a[200:210, 150:400] = True
        worm_b = np.zeros((520, 696), bool)
        worm_b[100:400, 300:310] = True  # crosses worm_a
        outside = np.zeros((520, 696), bool)
        outside[0:20, 0:60] = True  # outside the crop box: dropped
        image = np.full((520, 696), 3000, np.uint16)
        image[worm_a | worm_b] = 800 + n
        for channel, data in (("w1", image // 10), ("w2", image)):
            if well in missing_image:
                continue
            buffer = _io.BytesIO()
            tifffile.imwrite(buffer, data)
            files[f"BBBC010_v1_images/{BBBC_PREFIX}_{well}_{channel}_GUID-{n}.tif"] = \
                buffer.getvalue()
        for k, mask in enumerate((worm_a, worm_b, outside)):
            ok, png = cv2.imencode(".png", mask.astype(np.uint8) * 255)
            files[f"BBBC010_v1_foreground_eachworm/{well}_{k + 1:02d}_ground_truth.png"] = \
                png.tobytes()
        ok, png = cv2.imencode(".png", ((worm_a | worm_b) * 255).astype(np.uint8))
        files[f"BBBC010_v1_foreground/{well}_binary.png"] = png.tobytes()
    return files


def _write_tree(root, files):
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_bbbc010_layout_rules(tmp_path, caplog):
    wells = ["A01", "A02", "B01", "C13", "D01", "D02", "E04"]
    _write_tree(tmp_path, _bbbc_files(wells, missing_image=("C13",)))
    with caplog.at_level(logging.WARNING):
        everything = bbbc010.load(str(tmp_path), split="all")
    assert "C13" in caplog.text
    assert [s.name for s in everything] == ["A01", "A02", "B01", "E04", "D01", "D02"]
    assert [s.name for s in bbbc010.load(str(tmp_path), split="test")] == ["D01", "D02"]
    sample = everything[0]
    assert sample.image.shape == (448, 448, 1)
    assert sample.stack.max() == 2 and sample.stack.shape[0] == 2  # crossing worms, 3rd dropped
    assert sample.image[200 - 50, 200 - 120, 0] == 800
    train = bbbc010.split_wells(str(tmp_path), "train")
    val = bbbc010.split_wells(str(tmp_path), "val")
    assert len(val) == 3 and sorted(train + val) == ["A01", "A02", "B01", "E04"]  # 3 = minimum
    # a mask whose size differs from the image: error naming the mask
    cv2.imwrite(str(tmp_path / "BBBC010_v1_foreground_eachworm" / "A02_04_ground_truth.png"),
                np.zeros((10, 10), np.uint8))
    with pytest.raises(DatasetError, match="A02_04_ground_truth.png: mask shape"):
        bbbc010.load(str(tmp_path), split="all", wells=["A02"])


def _zip(path, files, strip_folder=False):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name.split("/", 1)[1] if strip_folder else name, data)
        archive.writestr("__MACOSX/._junk", b"x")


def test_bbbc010_download_and_extract_offline(tmp_path):
    files = _bbbc_files(["A01", "D05"])
    server = tmp_path / "server"
    server.mkdir()
    part = lambda prefix: {k: v for k, v in files.items() if k.startswith(prefix + "/")}  # noqa
    _zip(server / bbbc010.IMAGES_ZIP, part("BBBC010_v1_images"))
    _zip(server / bbbc010.FOREGROUND_ZIP, part("BBBC010_v1_foreground"), strip_folder=True)
    _zip(server / bbbc010.EACHWORM_ZIP, part("BBBC010_v1_foreground_eachworm"))
    dest = tmp_path / "data"
    bbbc010.download(str(dest), base_url=server.as_uri(), progress=False)
    assert sorted(os.listdir(dest)) == sorted(bbbc010.ARCHIVES.values())  # zips removed
    assert len(os.listdir(dest / "BBBC010_v1_foreground")) == 2  # no __MACOSX, no extra level
    assert [s.name for s in bbbc010.load(str(dest), split="test")] == ["D05"]
    # idempotent: nothing is fetched again (the server is gone)
    for archive in bbbc010.ARCHIVES:
        os.remove(server / archive)
    bbbc010.download(str(dest), base_url=server.as_uri(), progress=False)
    assert len(os.listdir(dest / "BBBC010_v1_images")) == 4
    with pytest.raises(DatasetError, match="download failed"):
        bbbc010.download(str(tmp_path / "other"), base_url=server.as_uri(), progress=False)
    assert not any(name.endswith(".part") for name in os.listdir(tmp_path / "other"))


def test_extract_archive_rejects_bad_archives(tmp_path):
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(DatasetError, match="broken.zip: not a readable zip"):
        bbbc010.extract_archive(str(tmp_path / "broken.zip"), str(tmp_path), "out")
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as archive:
        archive.writestr("../escape.txt", b"x")
    with pytest.raises(DatasetError, match="evil.zip: refusing unsafe member path"):
        bbbc010.extract_archive(str(tmp_path / "evil.zip"), str(tmp_path / "dest"), "out")
    assert not (tmp_path / "escape.txt").exists()
    assert not (tmp_path / "dest" / "out").exists()


# ---------------------------------------------------------------------------------------------
# OCC2014 .mat variants

OCC_SHAPE = (24, 36)  # not square: a transposition would be noticed


def _occ_items(count, seed):
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(count):
        images.append(rng.integers(0, 255, OCC_SHAPE).astype(np.uint8))
        centre = rng.integers(8, 16, 2)
        masks.append([_disk(OCC_SHAPE, centre, 6).astype(np.uint8),
                      _disk(OCC_SHAPE, centre + 4, 5).astype(np.uint8)])
    return images, masks


def _cell_array(items):
    array = np.empty((len(items), 1), dtype=object)
    for k, item in enumerate(items):
        array[k, 0] = item
    return array


def _save_v5(path, name, items, nested):
    if nested:
        items = [_cell_array(m) for m in items]
    scipy.io.savemat(path, {name: _cell_array(items)})


def _save_v73(path, name, items, nested):
    """A MATLAB v7.3-like file: HDF5 with a 512-byte user block, cells as object references,
    arrays stored transposed."""
    with h5py.File(path, "w", userblock_size=512) as handle:
        refs = handle.create_group("#refs#")
        counter = iter(range(10 ** 6))

        def store(value):
            if isinstance(value, list):
                inner = [store(v) for v in value]
                data = np.array(inner, dtype=h5py.ref_dtype).reshape(len(inner), 1)
            else:
                data = np.asarray(value).T
            dataset = refs.create_dataset(f"r{next(counter)}", data=data)
            return dataset.ref

        top = [store(v) for v in items]
        handle.create_dataset(name, data=np.array(top, dtype=h5py.ref_dtype).reshape(1, -1))


@pytest.mark.parametrize("test_format", ["v73", "v5"])
def test_occ2014_mat_files_and_paper_split(tmp_path, test_format):
    synthetic = tmp_path / "Dataset" / "Synthetic"
    synthetic.mkdir(parents=True)
    train_images, train_masks = _occ_items(3, seed=1)
    test_images, test_masks = _occ_items(5, seed=2)
    _save_v73(synthetic / "trainset.mat", "trainset", train_images, nested=False)
    _save_v5(synthetic / "trainset_GT.mat", "train_Cytoplasm", train_masks, nested=True)
    save = _save_v73 if test_format == "v73" else _save_v5
    save(synthetic / "testset.mat", "testset", test_images, nested=False)
    save(synthetic / "testset_GT.mat", "test_Cytoplasm", test_masks, nested=True)

    test = occ2014.load(str(tmp_path), split="test", size=None)
    assert [s.name for s in test] == ["test002", "test004"]  # odd 0-based indices
    for sample, k in zip(test, (1, 3)):
        np.testing.assert_array_equal(sample.image[..., 0], test_images[k])  # orientation kept
        assert _same_masks(_object_masks(sample), [m.astype(bool) for m in test_masks[k]])
    trainval = [s.name for s in occ2014.load(str(tmp_path), split="trainval", size=None)]
    assert trainval == ["train001", "train002", "train003", "test001", "test003", "test005"]
    (first,) = occ2014.load(str(tmp_path), split="trainval", limit=1, size=None)
    np.testing.assert_array_equal(first.image[..., 0], train_images[0])
    resized = occ2014.load(str(tmp_path), split="test", size=16)
    assert resized[0].image.shape == (16, 16, 1) and resized[0].stack.shape[1:] == (16, 16)


def test_occ2014_errors(tmp_path):
    images, masks = _occ_items(2, seed=0)
    _save_v5(tmp_path / "isbi_train.mat", "ISBI_Train", images, nested=False)
    _save_v5(tmp_path / "isbi_train_GT.mat", "train_Cytoplasm", masks[:1], nested=True)
    with pytest.raises(DatasetError, match="isbi_train_GT.mat: 1 ground-truth entries for 2"):
        occ2014.load(str(tmp_path), split="all")
    scipy.io.savemat(tmp_path / "isbi_train_GT.mat", {"a": 1, "b": 2})
    with pytest.raises(DatasetError, match="isbi_train_GT.mat: none of the variables a, b"):
        occ2014.load(str(tmp_path), split="all")
    (tmp_path / "other").mkdir()
    with pytest.raises(DatasetError, match="other: no OCC2014 training data"):
        occ2014.load(str(tmp_path / "other"), split="all")
    (tmp_path / "other" / "IndividualImages").mkdir()
    with pytest.raises(DatasetError, match="IndividualImages/ found but no isbi_train_GT.mat"):
        occ2014.load(str(tmp_path / "other"), split="all")
    _save_v5(tmp_path / "other" / "isbi_train_GT.mat", "train_Cytoplasm", masks, nested=True)
    cv2.imwrite(str(tmp_path / "other" / "IndividualImages" / "3.png"), images[0])
    with pytest.raises(DatasetError, match="3.png: no entry 3 in"):
        occ2014.load(str(tmp_path / "other"), split="all")


# ---------------------------------------------------------------------------------------------
# summary

def test_greedy_layer_count_and_summary(tmp_path, capsys):
    triangle = np.zeros((4, 4), bool)
    triangle[1, 2] = triangle[2, 1] = triangle[1, 3] = triangle[3, 1] = True
    triangle[2, 3] = triangle[3, 2] = True
    assert greedy_layer_count(triangle) == 3
    assert greedy_layer_count(np.zeros((1, 1), bool)) == 0
    _make_folder(tmp_path, stems=["a", "b"])
    samples = sorted(folder.load(str(tmp_path), split="all"), key=lambda s: s.name)
    summary = summarize(samples, distance=15.0, layers=2)
    assert summary["objects"] == [2, 3]
    # a: objects 0 and 2, 13.4 px apart (adjacent); b: 0 and 1 overlap, 1 and 2 are 4.6 px
    # apart, 0 and 2 13.4 px: a triangle needing 3 layers
    assert summary["layers_needed"] == [2, 3]
    assert summary["over_budget"] == 1
    assert summary["degree_max"] == 2 and summary["degree_mean"] == pytest.approx(8 / 5)
    o0, o1, o2 = _objects()
    covered = (o0 | o2).sum() + (o0 | o1 | o2).sum()
    assert summary["overlap_fraction"] == pytest.approx((o0 & o1).sum() / covered)
    text = format_summary(summary, "x")
    assert "objects per image: min 2" in text and "1 image(s) need more than N = 2" in text
    preview = tmp_path / "preview.png"
    assert main("folder", ["--data-dir", str(tmp_path), "--split", "all",
                           "--preview", str(preview)]) == 0
    assert cv2.imread(str(preview)).shape == (2 * (SHAPE[0] + 4), 2 * SHAPE[1] + 4, 3)
    assert "2 images" in capsys.readouterr().out
    assert main("folder", ["--data-dir", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
