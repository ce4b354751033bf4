"""Shared plumbing of the command-line tools: logging, quiet TensorFlow, one-line errors, and
the options that several commands share (tiling, post-processing thresholds), defined and checked
in one place.

Nothing in this module imports TensorFlow.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Callable, NoReturn


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ start-up chatter (call before TensorFlow is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def setup_logging(verbose: bool = False) -> None:
    """Log INFO (DEBUG with ``verbose``) messages of layernet to stderr, one short line each."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    for noisy in ("tensorflow", "absl", "h5py", "matplotlib", "PIL", "distributed"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: <message>`` as one line on stderr and exit with ``code``."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def run_main(main: Callable[[], int], debug: bool = False) -> None:
    """Run a CLI ``main``; turn expected errors into one-line messages and a non-zero exit."""
    try:
        code = main()
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except (ValueError, OSError, RuntimeError) as error:
        if debug or os.environ.get("LAYERNET_DEBUG"):
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        fail(message)
    sys.exit(code or 0)


def run_command(main: Callable[[list[str]], int], argv: list[str] | None = None) -> NoReturn:
    """Run a command's ``main(argv)`` through :func:`run_main` and exit (a console script).

    Parameters
    ----------
    main : callable
        ``main(argv) -> exit code``; raises on errors.
    argv : list of str or None, optional
        The arguments (default: ``sys.argv[1:]``); ``--verbose`` among them shows the traceback
        of an error instead of its one line.
    """
    arguments = sys.argv[1:] if argv is None else list(argv)
    run_main(lambda: main(arguments), debug="--verbose" in arguments)


def parse_key_values(items: list[str], flag: str = "--data-option") -> dict:
    """Turn repeated ``KEY=VALUE`` options into a dict; values are parsed as JSON when they can
    be (``count=8`` -> 8, ``kind=cells`` -> "cells").

    Raises
    ------
    ValueError
        For an item without ``=`` (the message names ``flag``).
    """
    import json

    options = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        try:
            options[key.strip()] = json.loads(value.strip())
        except json.JSONDecodeError:
            options[key.strip()] = value.strip()
    return options


def add_tile_options(group: argparse._ActionsContainer) -> None:
    """Add ``--tile-size``, ``--tile-overlap`` and ``--tile-batch`` (predict.py, evaluate.py);
    :func:`check_tile_options` checks them after parsing."""
    group.add_argument("--tile-size", default="auto", metavar="PX",
                       help="tiles hold at most PX x PX pixels; images of at most that many "
                       "pixels are predicted whole, larger ones cut into the tiles that cover "
                       "them with the fewest pixels; 'auto' (768) or 0 to never tile (default "
                       "auto)")
    group.add_argument("--tile-overlap", type=int, metavar="PX",
                       help="pixels shared by neighbouring tiles (default: about tile size / 6)")
    group.add_argument("--tile-batch", type=int, default=1, metavar="B",
                       help="tiles per network call (default 1)")


def check_tile_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check the options of :func:`add_tile_options`; ``--tile-size auto`` becomes ``None``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        Reports a bad value (``parser.error``: usage, one line, exit code 2).
    args : argparse.Namespace
        The parsed options; ``args.tile_size`` becomes an int (0 = never tile) or ``None``.
    """
    if args.tile_size == "auto":
        args.tile_size = None
    else:
        try:
            args.tile_size = int(args.tile_size)
        except ValueError:
            parser.error("--tile-size: expected a number of pixels or 'auto', "
                         f"got {args.tile_size!r}")
        if args.tile_size < 0:
            parser.error("--tile-size must be >= 0")
    if args.tile_overlap is not None and args.tile_overlap < 0:
        parser.error("--tile-overlap must be >= 0")
    if args.tile_batch < 1:
        parser.error("--tile-batch must be >= 1")


def threshold_overrides(tau: float | None, min_size: int | None) -> dict[str, Any]:
    """Config changes of the post-processing options ``--tau`` and ``--min-size``.

    Parameters
    ----------
    tau, min_size : float, int or None
        The options; ``None`` = not given (the run's value stays).

    Returns
    -------
    dict
        ``{"tau": ..., "min_size": ...}`` with the given ones only, for ``Config.replace``.
    """
    return {name: value for name, value in (("tau", tau), ("min_size", min_size))
            if value is not None}
