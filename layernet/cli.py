"""Shared plumbing of the command-line tools (logging, quiet TensorFlow, one-line errors)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable, NoReturn


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ start-up chatter (call before TensorFlow is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def setup_logging(verbose: bool = False) -> None:
    """Log INFO (DEBUG with ``verbose``) messages of layernet to stderr, one short line each."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    for noisy in ("tensorflow", "absl", "h5py", "matplotlib", "PIL"):
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
