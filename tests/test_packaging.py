"""The installable package (pyproject.toml): console scripts, the napari entry point, the wheel,
and the direction of the dependencies between its packages.

The first tests read the installed distribution (``pip install -e .`` or ``pip install .``, as
the README and ``.ci/run`` install it) and skip where layernet runs from a checkout without being
installed. The wheel test builds what ``pip install .`` would install from a copy of the sources.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.resources
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from layernet.config import Config
from tests.conftest import REPO

COMMANDS = ("train", "evaluate", "predict")
PACKAGES = ("layernet", "layernet_commands", "datasets", "bench")


def imported_packages(package: str) -> dict[str, set[str]]:
    """Per module file of ``package``, the top-level packages it imports (anywhere in it)."""
    found = {}
    for folder, _, files in os.walk(os.path.join(REPO, package)):
        for file in files:
            if file.endswith(".py"):
                path = os.path.join(folder, file)
                with open(path, encoding="utf-8") as handle:
                    tree = ast.parse(handle.read())
                names = set()
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        names.update(alias.name.split(".")[0] for alias in node.names)
                    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                        names.add(node.module.split(".")[0])
                found[os.path.relpath(path, REPO)] = names
    return found


def test_dependencies_point_one_way() -> None:
    """layernet imports neither the dataset readers nor the command lines; datasets does not
    import the command lines (layernet_commands joins the two)."""
    for package, forbidden in (("layernet", {"datasets", "layernet_commands", "bench"}),
                               ("datasets", {"layernet_commands", "bench"})):
        modules = imported_packages(package)
        assert "numpy" in set().union(*modules.values())  # the scan sees the imports
        for path, names in modules.items():
            assert not names & forbidden, (path, sorted(names & forbidden))


def installed() -> importlib.metadata.Distribution:
    try:
        return importlib.metadata.distribution("layernet")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("layernet is not installed (pip install -e .)")


def test_console_scripts_are_the_commands_of_the_scripts() -> None:
    scripts = {entry.name: entry for entry in installed().entry_points
               if entry.group == "console_scripts"}
    assert sorted(scripts) == sorted(f"layernet-{name}" for name in COMMANDS)
    for name in COMMANDS:
        module = importlib.import_module(f"layernet_commands.{name}")
        assert scripts[f"layernet-{name}"].load() is module.run
        with open(os.path.join(REPO, f"{name}.py"), encoding="utf-8") as handle:
            assert f"from layernet_commands.{name} import run" in handle.read()


def test_console_script_and_script_give_the_same_help() -> None:
    installed()
    executable = os.path.join(sysconfig.get_path("scripts"), "layernet-evaluate")
    if not os.path.exists(executable):
        pytest.skip(f"{executable} not found (installed for another interpreter)")
    env = dict(os.environ, COLUMNS="100")
    console = subprocess.run([executable, "--help"], capture_output=True, text=True, env=env,
                             cwd=REPO, timeout=120)
    script = subprocess.run([sys.executable, os.path.join(REPO, "evaluate.py"), "--help"],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert console.returncode == script.returncode == 0, console.stderr + script.stderr
    assert console.stdout.startswith("usage: layernet-evaluate ")
    assert script.stdout.startswith("usage: evaluate.py ")
    # the same options and text, only the program name (and so the usage's wrapping) differs
    assert console.stdout.split("options:", 1)[1] == script.stdout.split("options:", 1)[1]


def test_napari_finds_the_installed_plugin() -> None:
    npe2 = pytest.importorskip("npe2")
    (entry,) = [entry for entry in installed().entry_points if entry.group == "napari.manifest"]
    package, resource = entry.value.split(":")
    manifest = importlib.resources.files(package) / resource
    import layernet.napari

    assert manifest.is_file() and os.path.samefile(str(manifest), layernet.napari.MANIFEST)
    manager = npe2.PluginManager()  # a fresh manager, not napari's: discovery from the install
    manager.discover()
    plugin = manager.get_manifest(layernet.napari.PLUGIN_NAME)
    assert {command.id for command in plugin.contributions.commands} == {
        "layernet.get_reader", "layernet.predict_widget"}
    readers = [reader.command for reader in manager.iter_compatible_readers(["a.layers.tif"])]
    assert "layernet.get_reader" in readers
    assert "layernet.get_reader" not in [
        reader.command for reader in manager.iter_compatible_readers(["a.png"])]


def source_copy(tmp_path) -> str:
    """A copy of what ``pip install`` builds from (pyproject.toml, README, the four packages,
    models/) with a model folder ``zz-demo`` in models/ as model_zoo publishes one, and an
    export beside it (``model.onnx``) that must not ship."""
    setuptools = pytest.importorskip("setuptools")
    pytest.importorskip("wheel")
    if int(setuptools.__version__.split(".")[0]) < 64:
        pytest.skip("setuptools >= 64 is needed to build without network (pyproject.toml)")
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in PACKAGES:
        shutil.copytree(os.path.join(REPO, package), source / package, ignore=ignore)
    shutil.copytree(os.path.join(REPO, "models"), source / "models")
    demo = source / "models" / "zz-demo"
    demo.mkdir()
    Config(size="S").save(str(demo / "config.json"))
    for name in ("best.h5", "thresholds.json", "MODEL_CARD.md", "model.onnx"):
        (demo / name).write_text("{}\n")
    return str(source)


PROBE = """
import sys
if len(sys.argv) > 1:  # an editable install's finder, loaded by path (the machine may have
    import importlib.util  # another checkout's finder of the same module name installed)
    spec = importlib.util.spec_from_file_location("layernet_editable_finder", sys.argv[1])
    finder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(finder)
    sys.meta_path.insert(0, finder._EditableFinder)
import layernet, layernet.runfolder as r
print(layernet.__file__, r.shipped_models_folder(), r.resolve_model_path("zz-demo"),
      r.config_for_model("zz-demo").size)
"""
"""Prints where layernet is imported from, its shipped models folder, the model file of the
name ``zz-demo`` and that model's UNet size."""


def probe_install(tmp_path, pythonpath: str, *args: str) -> list[str]:
    """Run :data:`PROBE` in a fresh interpreter outside the repository; its four words."""
    env = {key: value for key, value in os.environ.items() if key != "LAYERNET_MODELS"}
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env=dict(env, PYTHONPATH=pythonpath))
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


def test_wheel_holds_every_module_and_the_napari_manifest(tmp_path) -> None:
    """``pip install .`` installs the wheel: every module of the four packages, napari.yaml, the
    entry points, the pretrained models of models/ (as layernet/_models, found by name from the
    installed package), and neither the tests nor the scripts."""
    source = source_copy(tmp_path)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "-q", "-w", str(tmp_path / "wheel"),
                           source], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (tmp_path / "wheel").glob("layernet-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {os.path.relpath(os.path.join(folder, file), REPO).replace(os.sep, "/")
                for package in PACKAGES
                for folder, _, files in os.walk(os.path.join(REPO, package))
                if "__pycache__" not in folder
                for file in files if file.endswith(".py")}
    assert expected and expected <= names, sorted(expected - names)
    assert "layernet/napari/napari.yaml" in names
    assert {name.split("/")[0] for name in names} == set(PACKAGES) | {
        wheel.name.split("-py3")[0] + ".dist-info"}
    models = os.path.join(source, "models")
    files = {os.path.relpath(os.path.join(folder, file), models).replace(os.sep, "/")
             for folder, _, found in os.walk(models) for file in found}
    shipped = {f"layernet/_models/{name}" for name in files if not name.endswith(".onnx")}
    assert "layernet/_models/README.md" in shipped and len(shipped) == len(files) - 1
    assert {name for name in names if name.startswith("layernet/_models/")} == shipped
    # installed (a pure wheel installs by unpacking), names resolve inside the package
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    module, folder, model, size = probe_install(tmp_path, str(site))
    assert module == str(site / "layernet" / "__init__.py")
    assert folder == str(site / "layernet" / "_models")
    assert model == str(site / "layernet" / "_models" / "zz-demo" / "best.h5") and size == "S"
    (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for name in COMMANDS:
        assert f"layernet-{name} = layernet_commands.{name}:run" in text
    assert "layernet = layernet.napari:napari.yaml" in text


def test_editable_install_finds_the_models_of_the_checkout(tmp_path) -> None:
    """``pip install -e .``: setuptools' editable wheel of the sources maps layernet to the
    checkout, and names resolve in the checkout's models/."""
    source = source_copy(tmp_path)
    wheels = tmp_path / "editable"
    wheels.mkdir()
    build = ("import sys; from setuptools import build_meta; "
             "print(build_meta.build_editable(sys.argv[1]))")
    done = subprocess.run([sys.executable, "-c", build, str(wheels)], cwd=source,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    site = tmp_path / "site"
    zipfile.ZipFile(wheels / done.stdout.split()[-1]).extractall(site)
    (finder,) = site.glob("__editable___layernet_*_finder.py")
    module, folder, model, size = probe_install(tmp_path, "", str(finder))
    assert module == os.path.join(source, "layernet", "__init__.py")
    assert folder == os.path.join(source, "models")
    assert model == os.path.join(source, "models", "zz-demo", "best.h5") and size == "S"
