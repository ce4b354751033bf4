"""BBBC010: C. elegans live/dead assay (Broad Bioimage Benchmark Collection), one mask per worm.

Official layout (as extracted from the three official zip files)::

    <data_dir>/BBBC010_v1_images/<...>_<WELL>_<w1|w2>_<GUID>.tif   (520x696, 16-bit)
    <data_dir>/BBBC010_v1_foreground_eachworm/<WELL>_<NN>_ground_truth.png   (one mask per worm)

``BBBC010_v2_images/`` is accepted as the image folder name too. ``w2`` is the bright-field
channel the paper uses (default), ``w1`` the fluorescence channel. Worms cross each other, so the
per-worm masks overlap; they become a label stack via :func:`layernet.instances.stack_from_masks`.

Protocol of the paper (authors' code): image and masks cropped to rows 50:498, columns 120:568
(448x448, ``crop=True``); the wells of plate row D ("subset D") are the test set, all other wells
the training pool, of which a seeded ``val_fraction`` (10 %, at least 3 wells;
:func:`datasets.val_split`, wells sorted by name) is held out for validation. A well without
image or without masks is skipped with a warning.

Run ``python -m datasets.bbbc010 --data-dir D`` for a summary and a preview image, or
``python -m datasets.bbbc010 --download D`` to fetch and extract the official files.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.request
import zipfile
from typing import Sequence

import numpy as np

from datasets import DEFAULT_VAL_FRACTION, Sample, SampleSource, source_key
from datasets.common import DatasetError, apply_limit, make_sample, require_folder, select_split
from layernet.files import TEMPORARY_PREFIX, atomic_output
from layernet.io import as_channels, read_image, read_mask

logger = logging.getLogger(__name__)

BASE_URL = "https://data.broadinstitute.org/bbbc/BBBC010/"
IMAGES_ZIP = "BBBC010_v2_images.zip"
FOREGROUND_ZIP = "BBBC010_v1_foreground.zip"
EACHWORM_ZIP = "BBBC010_v1_foreground_eachworm.zip"
IMAGES_URL = BASE_URL + IMAGES_ZIP
FOREGROUND_URL = BASE_URL + FOREGROUND_ZIP
EACHWORM_URL = BASE_URL + EACHWORM_ZIP

IMAGE_FOLDERS = ("BBBC010_v1_images", "BBBC010_v2_images")
FOREGROUND_FOLDER = "BBBC010_v1_foreground"
MASK_FOLDER = "BBBC010_v1_foreground_eachworm"
#: archive name -> folder it is extracted to (the official layout)
ARCHIVES = {
    IMAGES_ZIP: IMAGE_FOLDERS[0],
    FOREGROUND_ZIP: FOREGROUND_FOLDER,
    EACHWORM_ZIP: MASK_FOLDER,
}

#: the authors' crop box: rows 50:498, columns 120:568 (448x448)
CROP = (50, 498, 120, 568)
CHANNELS = {"w2": ("w2",), "w1": ("w1",), "both": ("w1", "w2")}
TEST_ROW = "D"

_IMAGE_NAME = re.compile(r"_(?P<well>[A-Z]\d{2})_(?P<channel>w\d)_[^_]*\.tiff?$", re.IGNORECASE)
_MASK_NAME = re.compile(r"^(?P<well>[A-Z]\d{2})_(?P<index>\d+)_ground_truth\.png$", re.IGNORECASE)


def image_folder(data_dir: str) -> str:
    """Return the image folder of a BBBC010 copy (``BBBC010_v1_images`` or ``..._v2_images``)."""
    for name in IMAGE_FOLDERS:
        path = os.path.join(data_dir, name)
        if os.path.isdir(path):
            return path
    raise DatasetError(f"{data_dir}: no {' or '.join(IMAGE_FOLDERS)} folder (BBBC010 images)")


def scan(data_dir: str) -> tuple[dict[str, dict[str, str]], dict[str, list[str]]]:
    """List the image files and per-worm mask files of each well.

    Returns
    -------
    images : dict
        well -> {channel ("w1"/"w2") -> path}.
    masks : dict
        well -> sorted list of mask paths.
    """
    folder = image_folder(data_dir)
    images: dict[str, dict[str, str]] = {}
    for file_name in sorted(os.listdir(folder)):
        match = _IMAGE_NAME.search(file_name)
        if match:
            well, channel = match["well"].upper(), match["channel"].lower()
            images.setdefault(well, {})[channel] = os.path.join(folder, file_name)
    mask_folder = require_folder(os.path.join(data_dir, MASK_FOLDER), "BBBC010 per-worm mask")
    masks: dict[str, list[str]] = {}
    for file_name in sorted(os.listdir(mask_folder)):
        match = _MASK_NAME.match(file_name)
        if match:
            masks.setdefault(match["well"].upper(), []).append(os.path.join(mask_folder, file_name))
    return images, masks


def usable_wells(data_dir: str, channels: Sequence[str]) -> tuple[list[str], dict, dict]:
    """Return the sorted wells having every channel in ``channels`` and masks (warn about others)."""
    images, masks = scan(data_dir)
    usable = []
    for well in sorted(set(images) | set(masks)):
        missing = [c for c in channels if c not in images.get(well, {})]
        if missing:
            logger.warning("BBBC010 well %s: no %s image in %s; well skipped", well,
                           "/".join(missing), image_folder(data_dir))
        elif well not in masks:
            logger.warning("BBBC010 well %s: no per-worm masks in %s; well skipped", well,
                           os.path.join(data_dir, MASK_FOLDER))
        else:
            usable.append(well)
    if not usable:
        raise DatasetError(f"{data_dir}: no BBBC010 well with both image and masks")
    return usable, images, masks


def _load_well(well: str, image_paths: dict[str, str], mask_paths: list[str],
               channels: Sequence[str], crop: bool) -> Sample:
    planes = [as_channels(read_image(image_paths[c]), expected_channels=1, name=image_paths[c])
              for c in channels]
    for path, plane in zip((image_paths[c] for c in channels), planes):
        if plane.shape != planes[0].shape:
            raise DatasetError(f"{path}: shape {plane.shape[:2]} differs from the other channel "
                               f"{planes[0].shape[:2]}")
    image = np.concatenate(planes, axis=-1)
    masks = []
    for path in mask_paths:
        mask = read_mask(path)
        if mask.shape != image.shape[:2]:
            raise DatasetError(f"{path}: mask shape {mask.shape} differs from image shape "
                               f"{image.shape[:2]}")
        masks.append(mask)
    if crop:
        top, bottom, left, right = CROP
        if image.shape[0] < bottom or image.shape[1] < right:
            raise DatasetError(f"{image_paths[channels[0]]}: image of shape {image.shape[:2]} is "
                               f"smaller than the crop box rows {top}:{bottom}, cols {left}:{right}")
        image = image[top:bottom, left:right]
        masks = [mask[top:bottom, left:right] for mask in masks]
    meta = {"image_paths": [image_paths[c] for c in channels], "mask_paths": list(mask_paths),
            "channels": list(channels), "crop": CROP if crop else None}
    return make_sample(image, masks, well, meta)


def _channels(channel: str) -> tuple[str, ...]:
    if channel not in CHANNELS:
        raise ValueError(f"unknown BBBC010 channel {channel!r}; choose one of "
                         f"{', '.join(CHANNELS)}")
    return CHANNELS[channel]


def _split(usable: list[str], split: str, seed: int, val_fraction: float,
           data_dir: str) -> list[str]:
    test = [w for w in usable if w.startswith(TEST_ROW)]
    trainval = [w for w in usable if not w.startswith(TEST_ROW)]
    if split == "test" and not test:
        raise DatasetError(f"{data_dir}: the BBBC010 test split (wells of row {TEST_ROW}) is not "
                           "present in this copy")
    return select_split(trainval, test, split, seed, val_fraction)


def split_wells(data_dir: str, split: str = "train", seed: int = 0, channel: str = "w2",
                val_fraction: float = DEFAULT_VAL_FRACTION) -> list[str]:
    """Return the wells of one split without reading any image (same rules as :func:`load`)."""
    return _split(usable_wells(data_dir, _channels(channel))[0], split, seed, val_fraction,
                  data_dir)


def source(
    data_dir: str,
    split: str = "train",
    seed: int = 0,
    channel: str = "w2",
    crop: bool = True,
    wells: Sequence[str] | None = None,
    limit: int | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
) -> SampleSource:
    """List one split of BBBC010 without reading any image.

    Parameters
    ----------
    data_dir : str
        Folder holding the official ``BBBC010_v1_images`` and
        ``BBBC010_v1_foreground_eachworm`` folders.
    split : {"train", "val", "trainval", "test", "all"}
        ``test`` = wells of plate row D; ``trainval`` = all other wells; ``train``/``val`` = seeded
        split of ``trainval`` (wells sorted by name); ``all`` = ``trainval`` + ``test``.
    seed : int
        Seed of the train/validation split.
    channel : {"w2", "w1", "both"}
        Bright-field ``w2`` (paper), fluorescence ``w1``, or both as two channels (w1, w2).
    crop : bool
        Crop image and masks to the authors' 448x448 box (rows 50:498, cols 120:568).
    wells : sequence of str, optional
        Keep only these wells of the split (for quick tests).
    limit : int, optional
        Keep only the first ``limit`` wells of the split.
    val_fraction : float
        Share of ``trainval`` held out for validation (at least 3 wells,
        :func:`datasets.val_split`).

    Returns
    -------
    datasets.SampleSource
        Items named by well; the files of an item are its image(s) and per-worm masks. Each
        decoded sample has ``image`` float32 ``(H, W, C)`` and ``stack`` int32 ``(L, H, W)``.

    Raises
    ------
    DatasetError
        If folders are missing or the test split (row D) is requested but absent; files that
        disagree in shape raise it when their sample is decoded.
    """
    channels = _channels(channel)
    usable, images, masks = usable_wells(data_dir, channels)
    chosen = _split(usable, split, seed, val_fraction, data_dir)
    if wells is not None:
        wanted = [w.upper() for w in wells]
        unknown = sorted(set(wanted) - set(usable))
        if unknown:
            raise DatasetError(f"{data_dir}: BBBC010 well(s) {', '.join(unknown)} not available")
        chosen = [w for w in chosen if w in wanted]
    chosen = apply_limit(chosen, limit)
    return SampleSource(
        names=list(chosen),
        files=[tuple(images[w][c] for c in channels) + tuple(masks[w]) for w in chosen],
        read=lambda index: _load_well(chosen[index], images[chosen[index]],
                                      masks[chosen[index]], channels, crop),
        key=source_key("bbbc010", channel=channel, crop=crop))


def load(data_dir: str, split: str = "train", seed: int = 0, **options) -> list[Sample]:
    """Decode every sample of ``source(data_dir, split, seed, **options)`` (see :func:`source`)."""
    return source(data_dir, split, seed, **options).load_all()


def _fetch(url: str, path: str, progress: bool) -> None:
    """Download ``url`` to ``path`` (atomically: :func:`layernet.files.atomic_output`)."""
    from tqdm import tqdm

    logger.info("downloading %s", url)
    try:
        with (atomic_output(path) as partial, urllib.request.urlopen(url, timeout=60) as response,
              open(partial, "wb") as out):
            total = response.headers.get("Content-Length")
            with tqdm(total=int(total) if total else None, unit="B", unit_scale=True,
                      desc=os.path.basename(path), disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    except OSError as exc:
        raise DatasetError(f"{url}: download failed: {exc}") from None


def extract_archive(zip_path: str, dest: str, folder: str) -> str:
    """Extract a zip file atomically to ``<dest>/<folder>``.

    The archive is unpacked into a temporary folder inside ``dest``; if it holds a single
    top-level folder, that folder's content is used. The result is renamed to
    ``<dest>/<folder>`` only when extraction succeeded, so a half-extracted folder never carries
    the official name. macOS metadata (``__MACOSX/``, ``._*``) is skipped; members with absolute
    paths or ``..`` are refused.

    Parameters
    ----------
    zip_path : str
        The archive.
    dest : str
        Dataset root.
    folder : str
        Name of the folder to create in ``dest``.

    Returns
    -------
    str
        The path of the extracted folder.
    """
    target = os.path.join(dest, folder)
    if os.path.isdir(target) and os.listdir(target):
        logger.info("%s exists; not extracting %s again", target, zip_path)
        return target
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"{zip_path}: not a readable zip archive ({exc})") from None
    with archive:
        members = []
        for member in archive.infolist():
            name = member.filename
            parts = name.replace("\\", "/").split("/")
            if name.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", name):
                raise DatasetError(f"{zip_path}: refusing unsafe member path {name!r}")
            if parts[0] == "__MACOSX" or parts[-1].startswith("._"):
                continue
            members.append(member)
        os.makedirs(dest, exist_ok=True)
        try:
            with atomic_output(target, folder=True) as temporary:
                for member in members:
                    archive.extract(member, temporary)
                entries = os.listdir(temporary)
                if len(entries) == 1 and os.path.isdir(os.path.join(temporary, entries[0])):
                    # the archive's one top folder: its content becomes the target's
                    inner = os.path.join(temporary, TEMPORARY_PREFIX + "top")
                    os.replace(os.path.join(temporary, entries[0]), inner)
                    for name in os.listdir(inner):
                        os.replace(os.path.join(inner, name), os.path.join(temporary, name))
                    os.rmdir(inner)
        except zipfile.BadZipFile as exc:
            raise DatasetError(f"{zip_path}: corrupt zip archive ({exc})") from None
    return target


def download(dest: str, base_url: str = BASE_URL, progress: bool = True,
             keep_archives: bool = False) -> None:
    """Download the official BBBC010 files and extract them into the official layout.

    Idempotent: an archive whose folder already exists (non-empty) is neither downloaded nor
    extracted again. Each archive is downloaded through a temporary file and extracted atomically
    (:func:`extract_archive`).

    Parameters
    ----------
    dest : str
        Dataset root to create/fill (``load(data_dir=dest)`` reads it afterwards).
    base_url : str, optional
        Where the three zip files live; the official Broad site by default. A ``file://`` URL of
        a local folder works too (offline tests, mirrors).
    progress : bool, optional
        Show a tqdm progress bar per file.
    keep_archives : bool, optional
        Keep the zip files after extraction.
    """
    os.makedirs(dest, exist_ok=True)
    for archive, folder in ARCHIVES.items():
        names = IMAGE_FOLDERS if folder == IMAGE_FOLDERS[0] else (folder,)
        existing = [os.path.join(dest, n) for n in names
                    if os.path.isdir(os.path.join(dest, n)) and os.listdir(os.path.join(dest, n))]
        if existing:
            logger.info("%s present; skipping %s", existing[0], archive)
            continue
        zip_path = os.path.join(dest, archive)
        if not os.path.isfile(zip_path):
            _fetch(base_url.rstrip("/") + "/" + archive, zip_path, progress)
        extract_archive(zip_path, dest, folder)
        if not keep_archives:
            os.remove(zip_path)


if __name__ == "__main__":
    from datasets.summary import main

    raise SystemExit(main("bbbc010"))
