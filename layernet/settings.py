"""The settings of a training run, merged from all their sources in one documented order.

:func:`training_config` is the one place that decides a run's :class:`~layernet.config.Config`
(``train.py`` only turns its options into the arguments). Sources, lowest priority first:

1. the defaults (:class:`~layernet.config.Config`, the paper's values);
2. the ``config.json`` of the model the run starts from (``init``, ``train.py --init``): every
   field when the run trains on the model's own dataset (phase 2 after phase 1); for another
   dataset, the fields that describe the model only (the model's ``data_options`` and
   :data:`~layernet.config.MACHINE_FIELDS` stay at the defaults);
3. presets (``recipe``, ``authors``; :func:`~layernet.config.apply_presets`): each changes only
   the fields it owns, and a run started from a model keeps the model's
   :data:`~layernet.config.ARCHITECTURE_FIELDS` whatever the recipe says;
4. a config file (``config_file``, ``--config``): the fields the file sets;
5. single fields (``fields``): the command-line options, then ``--set FIELD=VALUE``.

Three fields are then completed: ``phase``, unless given in ``fields``, is the published model's
own phase for a run started from a published model (a name or folder of
:mod:`layernet.model_zoo`: fine-tuning, unless the run changes the method), ``"overlap"`` for a
layering run started from a training run's model (phase 2 after phase 1) and ``"layering"``
otherwise (a file's phase is not taken over); ``data_options`` are those of the sources above
updated with ``data_options`` (``--data-option KEY=VALUE``); ``precision`` ``"auto"`` (the
default of a run that neither starts from a model nor reads a config file) becomes the precision
that pays on this machine, and a model's 16-bit precision that this machine would only emulate
(a model trained in bf16 on a CPU with bf16 instructions, fine-tuned on one without) becomes
``float32``, logged, unless the run sets ``precision`` itself.

A resumed run keeps its saved configuration; :func:`resume_config` lets it change only the
:data:`~layernet.config.MACHINE_FIELDS`, which say where and how this machine trains, not what
is trained.

Nothing in this module imports TensorFlow (``precision="auto"`` asks :mod:`layernet.model`,
which does, when it is resolved).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from layernet import runfolder
from layernet.config import MACHINE_FIELDS, Config, ConfigError, apply_presets
from layernet.methods import get_method, method_names

__all__ = ["config_file_fields", "resume_config", "training_config"]


def config_file_fields(path: str | os.PathLike) -> dict[str, Any]:
    """The fields that a config file sets, checked as :meth:`Config.load` checks the file.

    A file written by a run sets every field; a hand-written file may set a few, and only those
    are returned (a missing field must not reset what a model or a preset chose). Fields that
    :meth:`Config.from_dict` derives from the file (``split_seed`` from ``seed`` in files written
    before ``split_seed`` existed, ``val_fraction`` from a ``val_fraction`` data option) count as
    set.

    Parameters
    ----------
    path : str or os.PathLike
        A ``config.json``.

    Returns
    -------
    dict
        Field name -> value (``version`` left out).

    Raises
    ------
    ConfigError
        For a missing, unreadable or invalid file (the message names it).
    """
    loaded = Config.load(path).to_dict()
    with open(os.fspath(path), encoding="utf-8") as handle:
        raw = json.load(handle)
    given = set(raw)
    if "seed" in given:
        given.add("split_seed")
    if "val_fraction" in (raw.get("data_options") or {}):
        given.add("val_fraction")
    return {name: loaded[name] for name in sorted(given - {"version"}) if name in loaded}


def training_config(
    init: str | Config | None = None,
    config_file: str | os.PathLike | None = None,
    recipe: str | None = None,
    authors: bool = False,
    fields: Mapping[str, Any] | None = None,
    data_options: Mapping[str, Any] | None = None,
) -> Config:
    """The configuration of a new training run, merged as the module docstring says.

    Parameters
    ----------
    init : str, Config or None, optional
        The model the run starts from: a model file, a run or model folder or a model's name
        (its ``config.json`` and tuned thresholds are read,
        :func:`layernet.runfolder.config_for_model`; a published model is fine-tuned in its own
        phase) or its Config (treated as a training run's).
    config_file : str, os.PathLike or None, optional
        A config file whose fields override the defaults, the model's and the presets'.
    recipe : str or None, optional
        A name of :data:`layernet.config.RECIPES`.
    authors : bool, optional
        Apply the authors' code preset (:data:`layernet.config.AUTHORS_VARIANTS`).
    fields : mapping, optional
        Field name -> value, the highest priority (``None`` values are left out: not given).
        ``precision`` may be ``"auto"``.
    data_options : mapping, optional
        Dataset options added to (and overriding) those of the other sources.

    Returns
    -------
    Config
        Validated; ``version`` is this layernet's.

    Raises
    ------
    ConfigError
        For an unknown field or recipe, or an invalid value (the message names it).
    layernet.runfolder.RunFolderError
        If ``init`` is not a model of a run folder.
    """
    given = {name: value for name, value in (fields or {}).items() if value is not None}
    defaults = Config().to_dict()
    values = dict(defaults)
    published = False
    if init is not None:
        if not isinstance(init, Config):
            model_path = runfolder.resolve_model_path(os.fspath(init))
            published = runfolder.is_published_model(model_path)
            init = runfolder.config_for_model(model_path)
        values.update(init.to_dict())
        if given.get("data", init.data) != init.data:
            # another dataset: the model's data options, machine and use of its validation
            # images do not apply to it
            values.update({name: defaults[name]
                           for name in MACHINE_FIELDS + ("data_options", "train_on_val")})

    def default_phase(method: str) -> str:
        if published and method == init.method:
            return init.phase  # fine-tuning a published model: in the phase it was trained in
        return _default_phase(method, init is not None)

    method = given.get("method", values["method"])
    phase = given.get("phase", default_phase(method))
    values = apply_presets(values, recipe=recipe, authors=authors,
                           keep_architecture=init is not None, phase=phase, method=method)
    if config_file is not None:
        values.update(config_file_fields(config_file))
    if "precision" not in given and init is None and config_file is None:
        given["precision"] = "auto"
    if ("precision" not in given and init is not None and values["precision"] != "float32"
            and values["precision"] == init.precision):
        from layernet.model import precision_here  # TensorFlow: only for a 16-bit model

        given["precision"] = precision_here(init.precision, "training")
    if given.get("precision") == "auto":
        from layernet.model import resolve_precision  # TensorFlow: only when it is asked for

        given["precision"] = resolve_precision("auto")
    values.update(given)
    if "phase" not in given:
        values["phase"] = default_phase(values["method"])
    values["data_options"] = {**(values.get("data_options") or {}), **(data_options or {})}
    values["version"] = defaults["version"]
    return Config.from_dict(values, source="command line")


def _default_phase(method: str, from_model: bool) -> str:
    """The phase of a run that gives none: the method's first, or its last when the run
    starts from a model (``--init``: the layering method's overlap completion)."""
    if method not in method_names():  # Config.validate names the method
        return "layering"
    phases = get_method(method).phases
    return phases[-1] if from_model else phases[0]


def resume_config(saved: Config, **changes: Any) -> Config:
    """The configuration of a resumed run: the saved one with machine fields changed.

    Parameters
    ----------
    saved : Config
        The run's ``config.json``.
    **changes
        New values of :data:`layernet.config.MACHINE_FIELDS` (``None`` = keep); they change
        where and how the data is read and the training runs, never the batches or the model.

    Returns
    -------
    Config

    Raises
    ------
    ConfigError
        For a field that is not a machine field (a resumed run trains what it started with).
    """
    others = sorted(set(changes) - set(MACHINE_FIELDS))
    if others:
        raise ConfigError(f"a resumed run keeps its configuration; {', '.join(others)} cannot "
                          f"change (only {', '.join(MACHINE_FIELDS)} can)")
    changes = {name: value for name, value in changes.items() if value is not None}
    return saved.replace(**changes) if changes else saved
