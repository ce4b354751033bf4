"""Modules that say they do not import TensorFlow do not.

A module claims it in its docstring ("Nothing in this module imports TensorFlow.", or another
wording that :data:`CLAIM` matches, such as io's "(no TensorFlow)"). Every such module of
``layernet``, ``datasets`` and ``layernet_commands`` is imported alone in a fresh interpreter,
and TensorFlow must not be loaded afterwards: these are the modules that napari's process,
the prediction workers' parent and the dataset tools use without paying TensorFlow's import (or,
in napari's case, its crash beside the OpenGL driver). A failure shows the import chain that
loaded TensorFlow.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

PACKAGES = ("layernet", "datasets", "layernet_commands")

CLAIM = re.compile(r"nothing (in this module|here)\b[^.;]*\bimports? tensorflow|\(no tensorflow\)",
                   re.IGNORECASE)
"""A docstring's claim that importing the module does not import TensorFlow."""

WATCH = """
import importlib, sys, traceback

class Watch:
    stack = None

    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" and Watch.stack is None:
            Watch.stack = "".join(traceback.format_stack(limit=40))
        return None

sys.meta_path.insert(0, Watch())
importlib.import_module(sys.argv[1])
if "tensorflow" in sys.modules:
    print(Watch.stack or "tensorflow in sys.modules")
    sys.exit(3)
"""
"""Imports ``sys.argv[1]`` and exits 3, printing the stack of TensorFlow's import, if it loads."""


def claiming_modules() -> list[str]:
    """Dotted names of the modules whose docstring says that they do not import TensorFlow."""
    found = []
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(REPO, package)):
            for file in sorted(files):
                if not file.endswith(".py"):
                    continue
                path = os.path.join(folder, file)
                with open(path, encoding="utf-8") as handle:
                    docstring = ast.get_docstring(ast.parse(handle.read())) or ""
                if CLAIM.search(" ".join(docstring.split())):
                    parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
                    found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(found)


MODULES = claiming_modules()


def test_the_claims_are_found() -> None:
    """The search finds the claims (a changed wording would otherwise check nothing)."""
    assert {"layernet.io", "layernet.metrics", "layernet.samples", "layernet.streaming",
            "layernet.tiling", "layernet.napari", "layernet.napari.runner"} <= set(MODULES)
    assert not CLAIM.search("This module imports TensorFlow.")


@pytest.mark.parametrize("module", MODULES)
def test_module_does_not_import_tensorflow(module: str) -> None:
    done = subprocess.run([sys.executable, "-c", WATCH, module], cwd=REPO, capture_output=True,
                          text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode != 3, f"importing {module} loaded TensorFlow:\n{done.stdout}"
    assert done.returncode == 0, done.stderr[-3000:]
