"""Files on disk, each done one way: atomic writes, image file names, input collection.

* **Atomic writes** (:func:`atomic_output`, :func:`write_atomic`, :func:`write_bytes_atomic`,
  :func:`write_text_atomic`): every file or folder layernet writes is made under a temporary
  name (``.tmp-*``) in the destination's folder, flushed to disk and renamed over the
  destination, so a reader or a crash never sees half of it (:func:`layernet.runfolder.recover`
  and the streaming cache remove leftover ``.tmp-*`` names). One permission policy: the result
  has the modes of a file or folder newly created by this process (``0o666`` / ``0o777`` less
  the umask), whatever the temporary name was created with.
* **Image files**: :data:`IMAGE_EXTENSIONS` is the one list of the image formats read
  (:func:`layernet.io.read_image`) and looked for in folders.
* **Inputs** (:func:`collect_inputs`, :func:`folder_images`): files, folders and glob patterns
  expanded into paths in one way for prediction, evaluation and the folder dataset.

Nothing in this module imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from typing import Callable, Iterator, Sequence

__all__ = ["IMAGE_EXTENSIONS", "TEMPORARY_PREFIX", "atomic_output", "collect_inputs",
           "file_mode", "folder_images", "folder_mode", "is_image_file", "visible_entries",
           "write_atomic", "write_bytes_atomic", "write_text_atomic"]

IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".jp2", ".webp")
"""Extensions (lower case) of the image files that layernet reads and finds in folders."""

TEMPORARY_PREFIX = ".tmp-"
"""Names of files and folders being written start with this."""


def _umask() -> int:
    """The process's file-creation mask, read without changing it where the system allows
    (Linux ``/proc``; elsewhere set and restored at once)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of every file layernet writes: that of a newly created file (``0o666 & ~umask``)."""
    return 0o666 & ~_umask()


def folder_mode() -> int:
    """Mode of every folder layernet writes: that of a new folder (``0o777 & ~umask``)."""
    return 0o777 & ~_umask()


def _write_error(path: str, error: OSError) -> OSError:
    """One-line error naming the output, for a failed write (full disk, no permission)."""
    detail = error.strerror or " ".join(str(error).split()) or type(error).__name__
    return OSError(f"{path}: cannot write ({detail}); is the disk full or the folder not "
                   "writable?")


def _give_modes(path: str, folder: bool) -> None:
    """Give ``path`` (and, for a folder, everything in it) the modes of new files/folders."""
    if not folder:
        os.chmod(path, file_mode())
        return
    files, folders = file_mode(), folder_mode()
    os.chmod(path, folders)
    for root, sub_folders, names in os.walk(path):
        for name in sub_folders:
            os.chmod(os.path.join(root, name), folders)
        for name in names:
            os.chmod(os.path.join(root, name), files)


def _flush(path: str) -> None:
    """Make the written data of file ``path`` durable before it is renamed."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, folder: bool = False) -> Iterator[str]:
    """Yield a temporary path beside ``path`` to write to; on success it becomes ``path``.

    The temporary name ends with the destination's name, so that writers that choose the
    format from the extension (``.h5``, ``.zip``, ``.tif``) see it. On success the result gets
    the modes of :func:`file_mode` / :func:`folder_mode` (everything in a folder too) and is
    renamed to ``path``, replacing a file, or a folder (moved aside first, then deleted). On
    any error the temporary file or folder is removed and ``path`` is left as it was.

    Parameters
    ----------
    path : str or os.PathLike
        The destination.
    folder : bool, optional
        Yield an empty folder instead of a (created, empty) file.

    Yields
    ------
    str
        The temporary path.

    Raises
    ------
    OSError
        One line naming ``path`` if the temporary name cannot be made or renamed.
    """
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    suffix = f"-{os.path.basename(path)}"
    try:
        if folder:
            temporary = tempfile.mkdtemp(prefix=TEMPORARY_PREFIX, suffix=suffix, dir=parent)
        else:
            handle, temporary = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, suffix=suffix,
                                                 dir=parent)
            os.close(handle)
    except OSError as error:
        raise _write_error(path, error) from None
    try:
        yield temporary
        try:
            if not folder:
                _flush(temporary)
            _give_modes(temporary, folder)
            if folder and os.path.isdir(path):
                aside = tempfile.mkdtemp(prefix=TEMPORARY_PREFIX + "replaced-", dir=parent)
                os.replace(path, os.path.join(aside, "old"))
                os.replace(temporary, path)
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.replace(temporary, path)
        except OSError as error:
            raise _write_error(path, error) from None
    finally:
        if os.path.isdir(temporary) and folder:
            shutil.rmtree(temporary, ignore_errors=True)
        elif os.path.lexists(temporary) and not folder:
            os.remove(temporary)


def write_atomic(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(temporary_path)`` and make the written file ``path`` (:func:`atomic_output`).

    Parameters
    ----------
    path : str or os.PathLike
        The destination file.
    write : callable
        Writes the whole file to the path it is given (which exists, empty; a writer may
        replace it).

    Raises
    ------
    OSError
        One line naming ``path`` for a failed write (also one that ``write`` raises).
    """
    path = os.fspath(path)
    with atomic_output(path) as temporary:
        try:
            write(temporary)
        except OSError as error:
            raise _write_error(path, error) from None


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`write_atomic`)."""

    def write(temporary: str) -> None:
        with open(temporary, "wb") as out:
            out.write(data)

    write_atomic(path, write)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`write_atomic`)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named like an image file (:data:`IMAGE_EXTENSIONS`, any case)."""
    return os.fspath(path).lower().endswith(IMAGE_EXTENSIONS)


def visible_entries(folder: str | os.PathLike) -> list[str]:
    """Paths of the entries of ``folder`` whose names do not start with ``.``, sorted by name."""
    folder = os.fspath(folder)
    return [os.path.join(folder, name) for name in sorted(os.listdir(folder))
            if not name.startswith(".")]


def _image_file(path: str) -> bool:
    return is_image_file(path) and os.path.isfile(path)


def folder_images(folder: str | os.PathLike) -> list[str]:
    """The image files of ``folder`` (hidden ones left out), sorted by name."""
    return [path for path in visible_entries(folder) if _image_file(path)]


def collect_inputs(
    specs: Sequence[str],
    accept: Callable[[str], bool] = _image_file,
    accept_matched: Callable[[str], bool] | None = None,
    what: str = "image files",
) -> tuple[list[str], list[str]]:
    """Expand files, folders and glob patterns into paths (in order, without repeats).

    A folder gives its visible entries (:func:`visible_entries`) that ``accept``; a glob
    pattern its matches, sorted, that ``accept_matched`` (default ``accept``); an existing
    path itself.

    Parameters
    ----------
    specs : sequence of str
        Files, folders and glob patterns.
    accept : callable, optional
        Which entries of a folder are inputs (default: image files, :func:`is_image_file`).
    accept_matched : callable, optional
        Which matches of a pattern are inputs (default: ``accept``).
    what : str, optional
        The inputs' name in the messages of ``problems``.

    Returns
    -------
    paths : list of str
        The inputs; a path reached twice (also spelt differently) is kept once.
    problems : list of str
        One message, naming it, per spec that gave nothing.
    """
    accept_matched = accept_matched or accept
    paths: list[str] = []
    problems: list[str] = []
    for spec in specs:
        if os.path.isdir(spec):
            found = [path for path in visible_entries(spec) if accept(path)]
            if not found:
                problems.append(f"{spec}: folder holds no {what}")
        elif os.path.exists(spec):
            found = [spec]
        elif glob.has_magic(spec):
            found = [path for path in sorted(glob.glob(spec)) if accept_matched(path)]
            if not found:
                problems.append(f"{spec}: pattern matches no {what}")
        else:
            found = []
            problems.append(f"{spec}: file not found")
        paths.extend(found)
    unique: dict[str, str] = {}
    for path in paths:
        unique.setdefault(os.path.abspath(path), path)
    return list(unique.values()), problems
