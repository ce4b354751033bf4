"""Configuration of a layernet run: one flat, versioned dataclass saved as ``config.json``.

Defaults follow the paper (Chen, Wu & Merhof, BMVC 2022). Every place where the authors' public
code behaves differently is a named option whose docstring says which value reproduces it; see
:func:`Config.authors` for the full "authors' code" preset.

Longer than 500 lines on purpose: every setting sits in one dataclass with its comment, its
check in :meth:`Config.validate` and the named recipes that set it (``RECIPES``), so that one
file says what a run can be told and what each value means.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from layernet.files import write_text_atomic
from layernet.methods import BUILTIN_METHODS, get_method, method_names

CONFIG_VERSION = 1

MODEL_SIZES = {"S": 3, "M": 4, "L": 5}

METHODS = tuple(BUILTIN_METHODS)
"""The built-in methods (:mod:`layernet.methods`): ``layering`` = the paper's model; ``unet2`` /
``unet3`` = the semantic-segmentation baselines of the paper's Sec. 3.3. A method registered
with :func:`layernet.methods.register_method` is valid too
(:func:`layernet.methods.method_names`)."""

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
"""Compute precisions (Keras dtype policies) of a model; ``--precision auto`` resolves to one
of them with :func:`layernet.model.auto_precision`."""


class ConfigError(ValueError):
    """Raised for an unreadable, invalid or incompatible configuration."""


@dataclass
class Config:
    """All settings of a run (model, targets, losses, augmentation, training, post-processing).

    Attributes are grouped by topic; see the comment above each group. Four of them describe the
    machine rather than the model (:data:`MACHINE_FIELDS`: ``data_dir``, ``cache_dir``,
    ``streaming``, ``strategy``). Every field is read by the code that it configures; a run's
    settings are merged from their sources by :func:`layernet.settings.training_config`.
    """

    version: int = CONFIG_VERSION

    # --- data -------------------------------------------------------------------------------
    data: str = "synthetic"  # dataset name (datasets.DATASETS)
    data_options: dict[str, Any] = field(default_factory=dict)  # dataset-specific keywords
    channels: int = 1  # image channels the model expects
    normalize_low: float = 1.0  # percentile mapped to 0 (per image and channel)
    normalize_high: float = 99.8  # percentile mapped to 1
    val_fraction: float = 0.1  # share of the training pool held out for validation (>= 3 images)
    # train on the whole training pool, validation images included, and validate nothing:
    # best.h5 is the last epoch's weights (the moving average with ema_momentum) and the
    # thresholds stay as configured. For datasets too small to spare images for a validation
    # split that could choose a checkpoint; score such a model on its test split only
    train_on_val: bool = False
    # seed of the train/validation split (and of the synthetic data), apart from `seed`, so that
    # the validation images stay the same when the training seed changes
    split_seed: int = 0
    # the network works on images resized by this factor (training samples once, every image
    # or tile in prediction; its maps are resized back, so outputs, scores, min_size and
    # object_area stay in the image's pixels; layernet.rescale). adjacency_distance and the
    # elastic settings are in the image's pixels too (Config.at_network_scale), patch_size is
    # the crop the network sees. < 1 for objects much larger than the network needs: cheaper
    # steps and more of the objects in the receptive field
    input_scale: float = 1.0

    # --- model ------------------------------------------------------------------------------
    # "layering" (paper), "unet2" (object/background) or "unet3" (object/boundary/background)
    method: str = "layering"
    size: str = "M"  # UNet-S/M/L = 3/4/5 poolings
    filters: int = 64  # filters of the first UNet level (doubled per level)
    layers: int = 8  # N, channels of the layering head
    head_filters: int = 64  # filters of the two 3x3 convs of each head
    # momentum of the batch-norm moving statistics used at inference; 0.9 makes short trainings
    # usable at validation (Keras' and the authors' 0.99 needs thousands of steps to settle)
    bn_momentum: float = 0.9

    # --- targets ----------------------------------------------------------------------------
    adjacency_distance: float = 15.0  # t: objects closer than this (px) are adjacent

    # --- losses -----------------------------------------------------------------------------
    sparsity_weight: float = 0.1  # lambda of Eq. 5
    # weight of a soft Dice loss on the foreground added to Eq. 1's cross-entropy (0 = paper);
    # every method (for UNet-3 the foreground is 1 - P(background))
    foreground_dice_weight: float = 0.0
    # weight of the pixels on either side of the objects' outlines (the outermost object row
    # and the background row around it, layernet.losses.outline_band) in the foreground's
    # cross-entropy (UNet-2/3: in the head's cross-entropy); 1 = the paper's, every pixel alike.
    # For thin objects, whose IoU at 0.7-0.9 is decided by that row (docs/recipes.md)
    foreground_outline_weight: float = 1.0
    # "raw": u_i = mean of raw e_p (paper Eq. 2); "normalized": mean of e_p/|e_p| (authors)
    mean_mode: str = "raw"
    # "object": (1/C) sum_i 1/|Adj(i)| sum_j (paper Eq. 3); "pair": mean over adjacent pairs
    repulsion_mode: str = "object"
    # "paper": 1 - max(e/|e|) averaged over overlap-free fg (Eq. 4);
    # "authors": 1 - max(e/|e|)^2 summed over overlap-free fg, divided by all B*H*W pixels
    sparsity_mode: str = "paper"
    overlap_weight: float = 1.0  # weight of L_overlap (Eq. 6) in phase 2
    # "frozen": object -> layer assignment computed once from the phase-1 model (paper);
    # "online": recomputed every step from the current prediction (authors)
    overlap_targets: str = "frozen"
    # object -> layer assignment of the targets: "argmax" = the argmax of the object's mean
    # embedding (paper); "distinct" = the same preference, but adjacent objects get different
    # layers (greedy colouring, layernet.assignment); "orientation" = by the orientation of the
    # object in the augmented crop (N sectors of pi/N), adjacent objects in different layers;
    # "position" = left to right in the augmented crop, each object in the lowest layer its
    # neighbours leave free (for round objects; both not from the network: online targets only)
    layer_assignment: str = "argmax"
    # phase 1: weight of a loss against targets recomputed at every step from the current
    # embedding with layer_assignment (0 = the paper's phase 1; not in the paper)
    layer_target_weight: float = 0.0
    # loss of those targets: "bce" = cross-entropy of every layer on the foreground (does not
    # vanish for a switched-off layer); "dice" = Eq. 6
    layer_target_loss: str = "bce"
    # weight of the pixels covered by two or more objects in the "bce" layer-target loss
    # (1 = every foreground pixel alike): > 1 stresses overlap completion in phase 1, where
    # OCC2014's missed cell pixels are (docs/recipes.md, sweep 10; not in the paper)
    layer_target_overlap_weight: float = 1.0
    # layer of an object with no overlap-free pixel: "full" = argmax of the mean embedding over
    # its whole silhouette; "zero" = layer 0 (authors)
    covered_objects: str = "full"
    dice_smooth: float = 0.0  # +1 in the authors' Dice; 0 in the paper's Eq. 6
    overlap_per_image: bool = False  # authors: Dice per image then averaged over the batch
    # pooled over the batch (False, the equations' sums run over all images of the batch) or
    # per image then averaged over the images with overlap-free foreground (True, authors)
    layering_per_image: bool = False

    # --- augmentation -----------------------------------------------------------------------
    patch_size: int = 256  # random crop fed to the network in training
    flip: bool = True
    rotate: bool = True  # rotation by any angle
    gamma_low: float = 0.5
    gamma_high: float = 2.0
    gamma_probability: float = 0.5
    elastic_probability: float = 0.5
    elastic_strength: float = 8.0  # mean displacement in pixels
    elastic_smoothness: float = 16.0  # Gaussian sigma of the displacement field in pixels
    # Not in the paper: with this probability the patch is magnified by a factor drawn
    # log-uniformly in [1 / zoom_range, zoom_range] about its centre (objects of other sizes
    # than the training images'); 0 = off (the paper's augmentation)
    zoom_probability: float = 0.0
    zoom_range: float = 1.25

    # --- training ---------------------------------------------------------------------------
    phase: str = "layering"  # "layering" (phase 1) or "overlap" (phase 2)
    epochs: int = 100
    steps_per_epoch: int = 0  # 0: one pass over the training images (at least 1 step)
    batch_size: int = 8
    # "rmsprop" (paper), "adam" or "adamw" (Adam with decoupled weight decay)
    optimizer: str = "rmsprop"
    weight_decay: float = 0.0  # decoupled weight decay (AdamW's; 0 = none)
    learning_rate: float = 1e-4  # peak learning rate
    # "staircase": lr * decay_rate ** floor(step / decay_steps) (paper);
    # "cosine": linear warm-up from 0 over warmup_fraction of the training, then cosine decay to
    # final_lr_fraction * lr at its last step; "onecycle": cosine warm-up from lr / 25 over
    # warmup_fraction, then cosine decay to final_lr_fraction * lr. The last step is that of
    # --epochs, or with a time budget the step the budget is expected to reach (re-estimated
    # every epoch from the measured epoch time; layernet.schedules)
    lr_schedule: str = "staircase"
    decay_steps: int = 10000  # staircase only
    decay_rate: float = 0.9  # staircase only
    warmup_fraction: float = 0.0  # share of the training spent warming up (all schedules)
    final_lr_fraction: float = 0.01  # cosine / onecycle: last learning rate / peak
    # exponential moving average of the weights (0 = off, else its momentum, e.g. 0.99):
    # validation, best.h5 and last.h5 use the averaged weights, training the raw ones
    ema_momentum: float = 0.0
    # best.h5: the epoch whose mean validation meanAP over the last select_window epochs (its
    # own and the ones before it) is highest, so that one lucky score on a few validation
    # images does not choose the model; 1 = its own score (the paper's "best model")
    select_window: int = 1
    seed: int = 0  # seed of augmentation and initialisation (the split has split_seed)
    # bit-identical reruns on CPU (TensorFlow's deterministic kernels); --seed and --split-seed
    # alone fix the split, augmentation and initialisation but multi-threaded reductions may
    # differ in the last digits
    deterministic: bool = False
    # stop training after this wall time (0 = no limit); a resumed run counts the time its
    # earlier calls spent (state.json "train_seconds")
    time_budget_minutes: float = 0.0
    precision: str = "float32"  # float32 | mixed_bfloat16 | mixed_float16

    # --- post-processing --------------------------------------------------------------------
    tau: float = 0.5  # threshold of foreground and layers (Algorithm 1)
    min_size: int = 250  # S_min in pixels
    overlap_layers: bool = True  # Alg. 1 lines 7-8: also switch on every layer above tau
    connectivity: int = 2  # 2 = 8-connected components, 1 = 4-connected
    # not in the paper: touching objects of layers at most this many apart (cyclically) are one
    # object (layernet.postprocess.join_neighbour_layers), for layer_assignment="orientation"
    # models whose layers are sectors of orientation; 0 = Algorithm 1 as published
    join_layers: int = 0
    # not in the paper, with join_layers: a join that would make an object larger than
    # join_max_area_ratio * object_area pixels is not made, so that two whole objects of
    # neighbouring layers that touch stay apart (0 = no limit)
    join_max_area_ratio: float = 0.0
    # median area in pixels of the training split's objects; train.py measures it when
    # join_max_area_ratio is set (0 = not measured; set it by hand for a model trained before)
    object_area: int = 0
    # after training, choose tau and min_size on the validation split (best.h5's maps; grid
    # TAU_GRID x min_size * MIN_SIZE_FACTORS) and write them to thresholds.json, which
    # predict.py, evaluate.py and --init then use (command-line --tau / --min-size still win)
    tune_thresholds: bool = False

    # --- machine (MACHINE_FIELDS): where and how this machine trains, not what ---------------
    data_dir: str | None = None  # dataset folder (not needed for synthetic)
    # datasets larger than memory: "on" prepares every image once into a disk cache and streams
    # it (the same batches as in memory); "off" loads everything into memory; "auto" streams
    # when the decoded data would exceed a quarter of the available memory (layernet.streaming)
    streaming: str = "auto"
    cache_dir: str | None = None  # folder of the streaming cache (None: <run folder>/cache)
    strategy: str = "default"  # tf.distribute strategy: default | mirrored | multiworker

    # ------------------------------------------------------------------------------------------
    def validate(self) -> "Config":
        """Check every value; raise :class:`ConfigError` naming the first bad field."""
        choices = {
            "method": method_names(),
            "size": tuple(MODEL_SIZES),
            "mean_mode": ("raw", "normalized"),
            "repulsion_mode": ("object", "pair"),
            "sparsity_mode": ("paper", "authors"),
            "overlap_targets": ("frozen", "online"),
            "layer_assignment": ("argmax", "distinct", "orientation", "position"),
            "layer_target_loss": ("bce", "dice"),
            "covered_objects": ("full", "zero"),
            "phase": ("layering", "overlap"),
            "strategy": ("default", "mirrored", "multiworker"),
            "precision": PRECISIONS,
            "streaming": ("auto", "on", "off"),
            "optimizer": ("rmsprop", "adam", "adamw"),
            "lr_schedule": ("staircase", "cosine", "onecycle"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"config field {name!r} is {getattr(self, name)!r}; allowed: {', '.join(allowed)}"
                )
        positive_ints = ("channels", "filters", "layers", "head_filters", "batch_size",
                         "decay_steps", "patch_size")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"config field {name!r} must be a positive integer, got {value!r}")
        if self.layers < 2:
            raise ConfigError("config field 'layers' must be at least 2 (N layers)")
        if not 0.0 <= self.bn_momentum < 1.0:
            raise ConfigError("bn_momentum must be in [0, 1)")
        if self.time_budget_minutes < 0:
            raise ConfigError("time_budget_minutes must be >= 0")
        if self.epochs < 0 or self.steps_per_epoch < 0 or self.min_size < 0:
            raise ConfigError("epochs, steps_per_epoch and min_size must be >= 0")
        if not 0.0 < self.tau < 1.0:
            raise ConfigError(f"config field 'tau' must be in (0, 1), got {self.tau}")
        if not 0 <= self.normalize_low < self.normalize_high <= 100:
            raise ConfigError("normalisation percentiles must satisfy 0 <= low < high <= 100")
        if not 0 < self.gamma_low <= self.gamma_high:
            raise ConfigError("gamma range must satisfy 0 < gamma_low <= gamma_high")
        if not 0.0 <= self.zoom_probability <= 1.0:
            raise ConfigError(f"zoom_probability must be in [0, 1], got {self.zoom_probability}")
        if not 1.0 <= self.zoom_range <= 4.0:
            raise ConfigError("zoom_range must be in [1, 4] (the factor is drawn in "
                              f"[1 / zoom_range, zoom_range]), got {self.zoom_range}")
        if self.zoom_probability > 0 and self.zoom_range == 1.0:
            raise ConfigError("zoom_probability > 0 needs zoom_range > 1 (a factor of 1 changes "
                              "nothing)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError("val_fraction must be in [0, 1)")
        scale = self.input_scale
        if not (isinstance(scale, (int, float)) and not isinstance(scale, bool)
                and 0.0 < scale <= 4.0):
            raise ConfigError(f"input_scale must be in (0, 4], got {self.input_scale!r}")
        if (not isinstance(self.split_seed, int) or isinstance(self.split_seed, bool)
                or self.split_seed < 0):
            raise ConfigError(f"split_seed must be an integer >= 0, got {self.split_seed!r}")
        if "val_fraction" in self.data_options:
            raise ConfigError("val_fraction is a config field (train.py --val-fraction), not a "
                              "data option")
        if not isinstance(self.join_layers, int) or not 0 <= self.join_layers < self.layers:
            raise ConfigError(f"join_layers must be an integer in [0, layers) (0 = off), got "
                              f"{self.join_layers!r}")
        if not self.join_max_area_ratio >= 0 or not self.object_area >= 0:
            raise ConfigError("join_max_area_ratio and object_area must be >= 0 (0 = no limit / "
                              f"not measured), got {self.join_max_area_ratio!r} and "
                              f"{self.object_area!r}")
        if self.join_max_area_ratio and not self.join_layers:
            raise ConfigError("join_max_area_ratio limits the join of neighbouring layers: it "
                              "needs join_layers >= 1")
        if self.connectivity not in (1, 2):
            raise ConfigError("connectivity must be 1 (4-neighbours) or 2 (8-neighbours)")
        if self.learning_rate <= 0 or not 0 < self.decay_rate <= 1:
            raise ConfigError("learning_rate must be > 0 and decay_rate in (0, 1]")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if not 0.0 <= self.final_lr_fraction <= 1.0:
            raise ConfigError(f"final_lr_fraction must be in [0, 1], got {self.final_lr_fraction}")
        if int(self.select_window) != self.select_window or self.select_window < 1:
            raise ConfigError(f"select_window must be a whole number >= 1, got "
                              f"{self.select_window}")
        if self.train_on_val and self.select_window != 1:
            raise ConfigError("select_window chooses best.h5 by validation scores; with "
                              "train_on_val there is no validation (best.h5 is the last epoch)")
        if not 0.0 <= self.ema_momentum < 1.0:
            raise ConfigError(f"ema_momentum must be in [0, 1) (0 = off), got {self.ema_momentum}")
        if self.layer_target_weight < 0:
            raise ConfigError("layer_target_weight must be >= 0 (0 = the paper's phase 1), got "
                              f"{self.layer_target_weight}")
        if self.layer_target_overlap_weight <= 0:
            raise ConfigError("layer_target_overlap_weight must be > 0 (1 = overlap pixels "
                              f"weigh as others), got {self.layer_target_overlap_weight}")
        if self.layer_target_overlap_weight != 1 and (self.layer_target_weight == 0
                                                      or self.layer_target_loss != "bce"):
            raise ConfigError("layer_target_overlap_weight weighs the pixels of the 'bce' "
                              "layer-target loss: it needs layer_target_weight > 0 and "
                              "layer_target_loss 'bce'")
        method = get_method(self.method)
        if self.layer_target_weight > 0 and not method.has_layers:
            raise ConfigError(f"layer_target_weight trains the layering head; method "
                              f"{self.method!r} has none (set it to 0)")
        if (self.layer_assignment in ("orientation", "position") and self.phase == "overlap"
                and self.overlap_targets == "frozen"):
            raise ConfigError(f"layer_assignment {self.layer_assignment!r} follows the augmented "
                              "crop: phase 'overlap' needs overlap_targets 'online' with it")
        if self.foreground_outline_weight <= 0:
            raise ConfigError("foreground_outline_weight must be > 0 (1 = the outline pixels "
                              f"weigh as others), got {self.foreground_outline_weight}")
        if self.foreground_dice_weight < 0:
            raise ConfigError("foreground_dice_weight must be >= 0 (0 = the paper's loss), got "
                              f"{self.foreground_dice_weight}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.optimizer == "adamw" and self.weight_decay == 0:
            raise ConfigError("optimizer 'adamw' needs weight_decay > 0 (else it is 'adam')")
        if self.phase not in method.phases:
            raise ConfigError(f"method {self.method!r} has a single training phase; phase must be "
                              f"{method.phases[0]!r} (overlap completion belongs to the layering "
                              "method)" if len(method.phases) == 1 else
                              f"method {self.method!r} has the phases {', '.join(method.phases)}")
        stride = 2 ** MODEL_SIZES[self.size]
        if self.patch_size % stride:
            raise ConfigError(
                f"patch_size {self.patch_size} must be a multiple of {stride} for UNet-{self.size}"
            )
        return self

    @property
    def depth(self) -> int:
        """Number of pooling levels of the UNet (3/4/5 for S/M/L)."""
        return MODEL_SIZES[self.size]

    @property
    def stride(self) -> int:
        """Image sides must be a multiple of this (2**depth)."""
        return 2 ** self.depth

    @property
    def join_max_area(self) -> float:
        """The largest object, in pixels, that the join of neighbouring layers may make:
        ``join_max_area_ratio * object_area`` (0 = no limit).

        Raises
        ------
        ConfigError
            If ``join_max_area_ratio`` is set but ``object_area`` was never measured.
        """
        if not self.join_max_area_ratio:
            return 0.0
        if not self.object_area:
            raise ConfigError(
                f"join_max_area_ratio is {self.join_max_area_ratio} but object_area is 0 (not "
                "measured: the model was trained without the limit); set object_area to the "
                "median object area in pixels (in the model's config.json, or train.py --set "
                "object_area=N), or join_max_area_ratio to 0")
        return self.join_max_area_ratio * self.object_area

    def at_network_scale(self) -> "Config":
        """The settings the training samples are prepared and augmented with: at
        ``input_scale`` other than 1, ``adjacency_distance``, ``elastic_strength`` and
        ``elastic_smoothness`` (given in the image's pixels) multiplied by it, so that they
        mean the same part of an object in the network's pixels (this config itself at 1)."""
        if self.input_scale == 1.0:
            return self
        scale = self.input_scale
        return self.replace(adjacency_distance=self.adjacency_distance * scale,
                            elastic_strength=self.elastic_strength * scale,
                            elastic_smoothness=self.elastic_smoothness * scale)

    def replace(self, **changes: Any) -> "Config":
        """Return a copy with some fields changed (and validated)."""
        return dataclasses.replace(self, **changes).validate()

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "Config":
        """Build a configuration from a dict, rejecting unknown fields and future versions.

        Configs written before ``split_seed`` existed seeded the train/validation split with
        ``seed``: without ``split_seed``, it is ``seed``, so their validation images stay the
        same. A ``val_fraction`` data option (folder datasets took it so before) becomes the
        ``val_fraction`` field. An empty ``extra`` field (configs written before it was removed)
        is dropped.
        """
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(values).__name__}")
        values = dict(values)
        values.setdefault("split_seed", values.get("seed", cls.seed))
        options = values.get("data_options")
        if isinstance(options, dict) and "val_fraction" in options:
            options = dict(options)
            fraction = options.pop("val_fraction")
            if values.get("val_fraction", cls.val_fraction) not in (cls.val_fraction, fraction):
                raise ConfigError(f"{source}: val_fraction {values['val_fraction']} and data "
                                  f"option val_fraction={fraction} disagree; give one")
            values.update(data_options=options, val_fraction=fraction)
        version = values.get("version", CONFIG_VERSION)
        if not isinstance(version, int) or version > CONFIG_VERSION:
            raise ConfigError(
                f"{source}: config version {version!r} is newer than this layernet understands "
                f"({CONFIG_VERSION}); upgrade layernet"
            )
        extra = values.pop("extra", {})  # a free-form field that nothing read (removed)
        if extra:
            raise ConfigError(f"{source}: field 'extra' is no longer kept (nothing read it); "
                              f"remove it (it holds {sorted(extra)})")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown config field(s): {', '.join(unknown)}")
        try:
            config = cls(**values)
            return config.validate()
        except TypeError as error:
            raise ConfigError(f"{source}: {error}") from None
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Config":
        """Read a ``config.json``; raise :class:`ConfigError` with the file name on any problem."""
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as handle:
                values = json.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: not valid JSON ({error})") from None
        except OSError as error:
            raise ConfigError(f"{path}: cannot read ({error.strerror})") from None
        return cls.from_dict(values, source=path)

    def save(self, path: str | os.PathLike) -> None:
        """Write the configuration as JSON atomically (temporary file, then rename)."""
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def authors(cls, **changes: Any) -> "Config":
        """The preset that reproduces the authors' public code (see authors_code.md)."""
        values = dict(AUTHORS_VARIANTS)
        values.update(changes)
        return cls(**values).validate()


AUTHORS_VARIANTS: dict[str, Any] = dict(
    bn_momentum=0.99, mean_mode="normalized", repulsion_mode="pair", sparsity_mode="authors",
    overlap_targets="online", covered_objects="zero", dice_smooth=1.0, overlap_per_image=True,
    layering_per_image=True, layer_assignment="argmax")
"""Fields of the authors' code preset (``train.py --authors``): the losses and batch norm."""

MACHINE_FIELDS = ("data_dir", "cache_dir", "streaming", "strategy")
"""Fields that describe the machine a run trains on, not the model: where the data is, where
and whether its prepared samples are cached on disk, and the ``tf.distribute`` strategy. The same
data and seeds give the same batches whatever they are. A resumed run may change them
(:func:`layernet.settings.resume_config`), and a run started from a model (``--init``) takes
them from the model only when it trains on the model's dataset
(:func:`layernet.settings.training_config`). Every other field describes the model, its
training or its data."""

ARCHITECTURE_FIELDS = ("method", "size", "filters", "head_filters", "layers", "channels")
"""Fields that define the network's weights: a run started from a model (``--init``) keeps
the model's, whatever a recipe says."""

TAU_GRID = (0.3, 0.4, 0.5, 0.6, 0.7)
"""Thresholds tried by ``tune_thresholds``."""
MIN_SIZE_FACTORS = (0.25, 0.5, 1.0, 2.0, 3.0)
"""Multiples of the configured ``min_size`` tried by ``tune_thresholds``."""

RECIPES: dict[str, dict[str, Any]] = {
    "paper": dict(
        optimizer="rmsprop", learning_rate=1e-4, lr_schedule="staircase", decay_steps=10000,
        decay_rate=0.9, warmup_fraction=0.0, weight_decay=0.0, ema_momentum=0.0, size="M",
        filters=64, head_filters=64, batch_size=8, patch_size=256, flip=True, rotate=True,
        gamma_probability=0.5, elastic_probability=0.5, tune_thresholds=False),
    "cpu": dict(
        optimizer="rmsprop", learning_rate=1e-3, lr_schedule="cosine", decay_steps=10000,
        decay_rate=0.9, warmup_fraction=0.05, final_lr_fraction=0.01, weight_decay=0.0,
        ema_momentum=0.0, size="M", filters=16, head_filters=16, batch_size=4,
        patch_size=256, steps_per_epoch=50, flip=True, rotate=True, gamma_probability=0.5,
        elastic_probability=0.5, tune_thresholds=True),
}
"""Named training recipes (``train.py --recipe NAME``): the optimisation, network size and
augmentation settings they own. ``paper`` = Section 3 of the paper (RMSprop 1e-4, x0.9 every
10k steps, UNet-M/64, batch 8), made for a GPU and 1,500 epochs. ``cpu`` = the recipe chosen by
measurement for training in minutes to hours on a few CPU cores (``bench/recipes.py``; the
sweep table is in ``docs/recipes.md``). Its heads have 16 filters: a third cheaper steps than 32
(``bench/train_step.py``), so 30 minutes buy 1,073-1,242 steps instead of 745, and BBBC010
validation rose from 0.5667 / 0.7119 (32 filters, seed 1) to 0.5865 / 0.7269 (seed 1) and 0.5823
/ 0.7310 (seed 0); docs/recipes.md, "Narrow heads"."""

RECIPE_LAYERING: dict[str, dict[str, Any]] = {
    "paper": {},
    "cpu": dict(layer_target_weight=3.0, layer_assignment="orientation", join_layers=1,
                join_max_area_ratio=1.5),
}
"""What a recipe sets for the layering method only (the baselines have no layers). ``cpu``:
phase 1 learns targets from each object's orientation beside the paper's loss (weight 3), and
post-processing joins touching pieces of neighbouring orientation sectors up to 1.5 times the
training objects' median area (measured on BBBC010 validation in 30 minutes, seed 1: 0.5667 /
0.7119 with weight 3, 0.5585 / 0.6710 with weight 1; 2 hours, weight 3: 0.6127 / 0.7634; seed 0
with weight 1: 0.4648 / 0.6122 joined without the limit, 0.5666 / 0.7218 with it, against 0.4130
/ 0.5945 for the paper's loss alone; docs/recipes.md, sweeps 5 and 6 and "Two hours")."""

RECIPE_PHASE2: dict[str, dict[str, Any]] = {
    "paper": {},
    "cpu": dict(learning_rate=1e-4, layer_assignment="distinct", layer_target_weight=0.0,
                layer_target_overlap_weight=1.0),
}
"""What a recipe changes for phase 2 (overlap completion, started from phase 1's model).
``cpu``: phase 2 fine-tunes at a tenth of phase 1's peak rate (measured on BBBC010 validation:
a phase 2 at 1e-3 lowered the AJI of the phase-1 model, at 1e-4 much less), and touching objects
get different layers in the frozen targets (``layer_assignment="distinct"``); phase 1's layer
targets are not used in phase 2 (``layer_target_weight`` 0, and with it the weight of their
overlap pixels, ``layer_target_overlap_weight``, back to 1)."""


def apply_presets(values: dict[str, Any], recipe: str | None = None, authors: bool = False,
                  keep_architecture: bool = False, phase: str = "layering",
                  method: str | None = None) -> dict[str, Any]:
    """Return ``values`` (config fields) with a recipe and/or the authors' preset applied.

    Each preset changes only the fields it owns (:data:`RECIPES`, :data:`AUTHORS_VARIANTS`);
    with ``keep_architecture`` (a run started from a model) the recipe leaves the
    :data:`ARCHITECTURE_FIELDS` as they are.

    Parameters
    ----------
    values : dict
        Config fields, e.g. ``Config().to_dict()`` updated with an ``--init`` model's config.
    recipe : str or None, optional
        A name of :data:`RECIPES`.
    authors : bool, optional
        Apply :data:`AUTHORS_VARIANTS`.
    keep_architecture : bool, optional
        Keep the network fields of ``values``.
    phase : str, optional
        ``"overlap"`` also applies the recipe's :data:`RECIPE_PHASE2` settings.
    method : str or None, optional
        The run's method (default: ``values["method"]``); a method with layers
        (``"layering"``) also applies the recipe's :data:`RECIPE_LAYERING` settings.

    Returns
    -------
    dict
        A new dict.

    Raises
    ------
    ConfigError
        For an unknown recipe.
    """
    merged = dict(values)
    if recipe is not None:
        if recipe not in RECIPES:
            raise ConfigError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
        merged.update({key: value for key, value in RECIPES[recipe].items()
                       if not (keep_architecture and key in ARCHITECTURE_FIELDS)})
        name = method or merged.get("method", "layering")
        if name in method_names() and get_method(name).has_layers:
            merged.update(RECIPE_LAYERING[recipe])
        if phase == "overlap":
            merged.update(RECIPE_PHASE2[recipe])
    if authors:
        merged.update(AUTHORS_VARIANTS)
    return merged
