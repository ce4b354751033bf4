"""One of each (issue 13): one atomic writer with one permission policy, one list of image
extensions, one input collector, one set of tile options, one place for the --tau / --min-size
overrides, one padding rule. No TensorFlow."""

from __future__ import annotations

import os
import re
import stat
import zipfile

import numpy as np
import pytest

from layernet import files
from tests.conftest import REPO

STACK = np.zeros((2, 12, 10), np.int32)
STACK[0, 1:5, 1:5] = 1
STACK[1, 3:9, 2:8] = 2


@pytest.fixture
def umask_027():
    """A umask that differs from the private mode of temporary files (0600) and the usual 022."""
    old = os.umask(0o027)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def written_by_every_writer(folder) -> list[str]:
    """Call every writer of the library (TensorFlow-free ones, and the model saver with a stand-in
    network) into ``folder``; return the paths written."""
    from datasets import bbbc010
    from layernet import export, runfolder
    from layernet.config import Config
    from layernet.evaluation import write_report
    from layernet.io import write_image_atomic, write_label_stack
    from layernet.metrics import score_image, summarize

    class StandInNetwork:
        def save(self, path: str) -> None:
            with open(path, "wb") as handle:
                handle.write(b"weights")

    folder = str(folder)
    paths = [os.path.join(folder, name) for name in (
        "config.json", "state.json", "history.csv", "arrays.npz", "best.h5", "x.layers.tif",
        "x.overlay.png", "x.rois.zip", "x.coco.json", "x.flat.tif", "x.prob.tif")]
    Config().save(paths[0])
    runfolder.save_json_atomic(paths[1], {"epoch": 1})
    runfolder.write_history(paths[2], [{"epoch": 1, "loss": 0.5}])
    runfolder.save_arrays_atomic(paths[3], {"a": np.arange(3)})
    runfolder.save_model_atomic(StandInNetwork(), paths[4])
    write_label_stack(paths[5], STACK)
    write_image_atomic(paths[6], np.zeros((12, 10, 3), np.uint8))
    export.save_rois(paths[7], STACK)
    export.save_coco(paths[8], STACK, "x.png")
    export.save_flat(paths[9], STACK)
    export.save_probability_maps(paths[10], np.zeros((12, 10)), np.zeros((12, 10, 3)))
    masks = export.save_masks(os.path.join(folder, "x.masks"), STACK)
    scores = {"reference": [score_image(STACK, STACK, "reference", name="x")]}
    report = write_report(os.path.join(folder, "eval"), {"reference": summarize(
        scores["reference"])}, scores, {})
    archive = os.path.join(folder, "a.zip")
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("top/inner/file.txt", b"x")
    extracted = bbbc010.extract_archive(archive, folder, "extracted")
    return paths + masks + list(report) + [os.path.join(folder, "x.masks"), extracted,
                                           os.path.join(extracted, "inner"),
                                           os.path.join(extracted, "inner", "file.txt")]


def test_every_writer_gives_the_same_modes_and_leaves_no_temporary_file(tmp_path, umask_027):
    paths = written_by_every_writer(tmp_path)
    for path in paths:
        expected = 0o750 if os.path.isdir(path) else 0o640
        assert _mode(path) == expected, (path, oct(_mode(path)))
    assert files.file_mode() == 0o640 and files.folder_mode() == 0o750
    leftovers = [name for _, folders, names in os.walk(tmp_path) for name in folders + names
                 if name.startswith(files.TEMPORARY_PREFIX)]
    assert not leftovers
    assert os.listdir(tmp_path / "extracted") == ["inner"]  # the archive's top folder unwrapped


def test_a_failed_write_keeps_the_old_file_and_names_the_destination(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("old")

    def broken(temporary: str) -> None:
        with open(temporary, "w") as handle:
            handle.write("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match=r"config.json: cannot write \(No space left on device\)"):
        files.write_atomic(str(path), broken)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["config.json"]
    with pytest.raises(RuntimeError):
        with files.atomic_output(str(tmp_path / "folder"), folder=True) as temporary:
            open(os.path.join(temporary, "a"), "w").close()
            raise RuntimeError("stop")
    assert os.listdir(tmp_path) == ["config.json"]
    with pytest.raises(OSError, match="missing/x.json: cannot write"):
        files.write_text_atomic(str(tmp_path / "missing" / "x.json"), "{}")


def test_a_folder_output_replaces_an_older_folder(tmp_path):
    from layernet import export

    folder = tmp_path / "x.masks"
    export.save_masks(str(folder), STACK)
    one = np.zeros((1, 12, 10), np.int32)
    one[0, :2, :2] = 1
    assert export.save_masks(str(folder), one) == [str(folder / "0001.png")]
    assert os.listdir(folder) == ["0001.png"] and sorted(os.listdir(tmp_path)) == ["x.masks"]


def _library_sources() -> dict[str, str]:
    sources = {}
    for package in ("layernet", "datasets", "layernet_commands"):
        for folder, _, names in os.walk(os.path.join(REPO, package)):
            for name in names:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    with open(path, encoding="utf-8") as handle:
                        sources[os.path.relpath(path, REPO)] = handle.read()
    return sources


def test_files_is_the_one_writer_and_the_one_list_of_image_extensions():
    import datasets.common
    import layernet.io

    assert layernet.io.IMAGE_EXTENSIONS is files.IMAGE_EXTENSIONS
    assert datasets.common.IMAGE_EXTENSIONS is files.IMAGE_EXTENSIONS
    home = os.path.join("layernet", "files.py")
    for path, text in _library_sources().items():
        if path == home:
            continue
        assert not re.search(r"mkstemp|mkdtemp|NamedTemporaryFile|os\.chmod", text), path
        assert not re.search(r"[\"']\.jpe?g[\"']", text), f"{path}: a list of image extensions"


def test_collect_inputs_folders_patterns_files(tmp_path):
    for name in ("b.png", "a.TIF", ".hidden.png", "notes.txt", "c.layers.tif"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    folder = str(tmp_path)
    paths, problems = files.collect_inputs([folder, str(tmp_path / "b.png"),
                                            str(tmp_path / "*.txt"), str(tmp_path / "none"),
                                            str(tmp_path / "*.jpg")])
    names = [os.path.basename(path) for path in paths]
    assert names == ["a.TIF", "b.png", "c.layers.tif"]  # b.png twice: once; *.txt: not images
    assert problems == [f"{tmp_path / '*.txt'}: pattern matches no image files",
                        f"{tmp_path / 'none'}: file not found",
                        f"{tmp_path / '*.jpg'}: pattern matches no image files"]
    assert files.folder_images(folder) == [str(tmp_path / n) for n in ("a.TIF", "b.png",
                                                                        "c.layers.tif")]
    empty, problems = files.collect_inputs([str(tmp_path / "sub")])
    assert empty == [] and problems == [f"{tmp_path / 'sub'}: folder holds no image files"]


def test_predict_and_evaluate_collect_their_inputs_alike(tmp_path):
    from layernet.evaluation import index_by_name
    from layernet_commands.evaluate import index_by_name_images
    from layernet_commands.predict import collect_inputs

    for name in ("a.png", "a.overlay.png", "b.tif", "b.layers.tif", "c.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "d.masks").mkdir()
    files_, problems = collect_inputs([str(tmp_path)])
    assert [os.path.basename(p) for p in files_] == ["a.png", "b.tif"] and not problems
    index = index_by_name(str(tmp_path))
    assert os.path.basename(index["b"]) == "b.layers.tif"
    assert os.path.basename(index["d"]) == "d.masks" and "c" not in index
    assert os.path.basename(index_by_name_images(str(tmp_path))["a"]) == "a.png"


def test_tile_options_and_threshold_overrides_are_one_set(capsys):
    from layernet.cli import threshold_overrides
    from layernet_commands import evaluate, predict

    commands = {"predict": lambda extra: predict.parse_args(["x.png", *extra]),
                "evaluate": lambda extra: evaluate.parse_args(["--model", "m", "--data",
                                                               "synthetic", *extra])}
    for name, parse in commands.items():
        args = parse([])
        assert (args.tile_size, args.tile_overlap, args.tile_batch) == (None, None, 1), name
        assert parse(["--tile-size", "0"]).tile_size == 0
        for bad in (["--tile-batch", "0"], ["--tile-overlap", "-1"], ["--tile-size", "-4"],
                    ["--tile-size", "big"]):
            with pytest.raises(SystemExit):
                parse(bad)
            assert "--tile-" in capsys.readouterr().err, (name, bad)
    assert threshold_overrides(None, None) == {}
    assert threshold_overrides(0.4, None) == {"tau": 0.4}
    assert threshold_overrides(None, 30) == {"min_size": 30}


def test_one_padding_rule():
    pytest.importorskip("keras")
    from layernet.model import pad_to_stride

    image = np.arange(2 * 10 * 13 * 1, dtype=np.float32).reshape(2, 10, 13, 1)
    padded, pads = pad_to_stride(image, 8, mode="reflect", first_axis=1)
    assert pads == (6, 3) and padded.shape == (2, 16, 16, 1)
    assert np.array_equal(padded, np.pad(image, ((0, 0), (0, 6), (0, 3), (0, 0)), "reflect"))
    # too small to mirror: zeros, as the labels of training are padded
    small, _ = pad_to_stride(image[:, :4, :4], 16, mode="reflect", first_axis=1)
    assert small.shape == (2, 16, 16, 1) and not small[:, 4:].any()
    stack, pads = pad_to_stride(STACK.transpose(1, 2, 0), 16)
    assert pads == (4, 6) and not stack[12:].any() and not stack[:, 10:].any()
    with pytest.raises(ValueError, match="padding mode"):
        pad_to_stride(image, 8, mode="edge")
