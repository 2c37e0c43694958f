"""Training configuration: one pydantic model per stage, the released presets as data, and overrides.

Every default lives on its pydantic field: the defaults are the authors' released GTA5 -> Cityscapes
recipe (``configs/gta5/deeplabv2_r101_{src,proca,ssl}.yaml`` and ``run_proca_resnet101_*.sh``); the
presets (:data:`PRESETS`) hold only what another pair changes (SYNTHIA's classes and image size). A run's
configuration is resolved in this order, each layer overriding the previous one:

1. the preset for ``--src``/``--tgt`` (on the field defaults);
2. ``--config FILE`` (TOML, JSON or YAML; any subset of keys, nested like the models below);
3. ``--set key.path=value`` (the value is parsed as a YAML/JSON scalar or list);
4. the options the user typed (:data:`TRAIN_OPTIONS`: ``--arch``, ``--seed``, ``--amp``, ``--iters``, ...);
   an option not typed changes nothing.

Unknown keys are errors (``extra="forbid"``) that name the key and suggest the closest valid one.
Sizes are ``[H, W]`` everywhere.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from proca.errors import ConfigError

__all__ = [
    "IMAGE_PIXEL_LIMIT",
    "PRESETS",
    "SCALE_RANGE",
    "SIZE_RANGE",
    "TILE_PIXEL_LIMIT",
    "TILE_SIZE",
    "TRAIN_OPTIONS",
    "AdamWConfig",
    "DAFormerStageConfig",
    "EvalConfig",
    "MemoryBankConfig",
    "ProcaStageConfig",
    "PrototypeStageConfig",
    "PseudoLabelStageConfig",
    "SelfTrainingStageConfig",
    "SourceStageConfig",
    "TrainConfig",
    "apply_options",
    "apply_overrides",
    "check_scales",
    "check_size",
    "config_keys",
    "load_config_file",
    "preset",
    "resolve_config",
]

Size = tuple[int, int]
CheckpointChoice = Literal["last", "best", "release"]
"""last: the stage's final checkpoint; best: its best validation; release: what the release's scripts use
(``model_current.pth``: the newest validated checkpoint that did not beat the best so far)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)


#: Test scales accepted by ``--scales``, ``eval.scales`` and ``proca.predict`` (inclusive).
SCALE_RANGE: tuple[float, float] = (0.1, 4.0)
#: Sides accepted for every image size (``--input-size``, ``--size``, config sizes, checkpoint metadata).
SIZE_RANGE: tuple[int, int] = (16, 8192)
#: Images with more pixels are refused before they are decoded (Pillow calls larger ones decompression
#: bombs); 100 megapixels is e.g. 10000x10000.
IMAGE_PIXEL_LIMIT = 100_000_000
#: A network pass on more input pixels than this (e.g. a 2048x2048 input, or a large --input-size times a
#: scale) runs in overlapping :data:`TILE_SIZE` windows whose logits are averaged, so memory stays bounded.
TILE_PIXEL_LIMIT = 2048 * 2048
#: The (H, W) window of tiled prediction; neighbouring windows overlap by a third.
TILE_SIZE: tuple[int, int] = (1024, 1024)


def check_scales(values: Sequence[float], option: str = "scales") -> tuple[float, ...]:
    """The scales as floats when every one is finite and inside :data:`SCALE_RANGE`.

    Raises:
        ConfigError: empty, not numbers, non-finite or out of range; the message names ``option``.
    """
    low, high = SCALE_RANGE
    try:
        scales = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"{option} {values!r}: give numbers such as 0.5,1,1.5") from None
    bad = [s for s in scales if not (math.isfinite(s) and low <= s <= high)]
    if not scales or bad:
        what = f"{bad[0]:g} is not a finite scale" if bad else "no scale given; give finite scales"
        raise ConfigError(f"{option}: {what} in [{low:g}, {high:g}] (e.g. 0.5,1,1.5)")
    return scales


def check_size(value: Sequence[Any], option: str = "size") -> Size:
    """``(H, W)`` as ints when both sides are whole numbers inside :data:`SIZE_RANGE`.

    Raises:
        ConfigError: not two numbers, not whole, or out of range; the message names ``option``.
    """
    low, high = SIZE_RANGE
    try:
        values = [float(v) for v in value]
    except (TypeError, ValueError):
        values = []
    if len(values) != 2 or not all(math.isfinite(v) and v == int(v) and low <= v <= high for v in values):
        shown = "x".join(f"{v:g}" for v in values) if len(values) == 2 else repr(value)
        raise ConfigError(f"{option} {shown}: give HxW with whole sides in {low}..{high} (e.g. 512x1024)")
    return int(values[0]), int(values[1])


def _check_size(value: Size | None) -> Size | None:
    if value is None:
        return None
    try:
        return check_size(value, "the size")
    except ConfigError as err:
        raise ValueError(str(err)) from None


class _SolverFields(_Model):
    """Optimiser and schedule fields shared by the three training stages.

    ``lr = lr * (1 - it / poly_iters) ** poly_power`` for the backbone, ``head_lr_mult`` times that for
    the classifier head; training stops after ``iters`` iterations (the release stops the source stage
    at 20,000 of a 31,250-iteration schedule).
    """

    iters: int = Field(gt=0, description="Iterations the stage runs (the release's STOP_ITER).")
    poly_iters: int | None = Field(None, gt=0, description="Length of the poly schedule (MAX_ITER); None: iters.")
    lr: float = Field(gt=0, description="Base learning rate of the backbone.")
    head_lr_mult: float = Field(10.0, gt=0, description="Learning-rate multiplier of the classifier head.")
    poly_power: float = Field(0.9, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: int = Field(8, gt=0, description="Global images per step (all processes together).")
    per_device_batch: int | None = Field(
        None, gt=0, description="Most images per forward pass on one device; smaller means gradient accumulation."
    )
    eval_every: int = Field(1000, ge=0, description="Validate every N iterations (0: only at the end).")

    @model_validator(mode="after")
    def _schedule_covers_stop(self) -> _SolverFields:
        if self.poly_iters is not None and self.poly_iters < self.iters:
            raise ValueError(
                f"poly_iters ({self.poly_iters}) must be >= iters ({self.iters}): the schedule would go negative"
            )
        return self

    @property
    def schedule_length(self) -> int:
        """Iterations of the poly schedule."""
        return self.poly_iters if self.poly_iters is not None else self.iters


class SourceStageConfig(_SolverFields):
    """Stage 1, source only: cross entropy + ``lovasz_weight`` * Lovasz-softmax, class-balanced sampling."""

    iters: int = Field(20_000, gt=0)
    poly_iters: int | None = Field(31_250, gt=0)
    lr: float = Field(5e-4, gt=0)
    input_size: Size = Field((720, 1280), description="Source resize [H, W] (GTA5 1280x720, SYNTHIA 1280x760).")
    lovasz_weight: float = Field(0.75, ge=0)
    color_jitter: bool = Field(False, description="Colour jitter, grayscale and blur on the source (off as released).")
    class_balanced: bool = Field(True, description="Class-balanced source sampling from the label info.")

    _size = field_validator("input_size")(_check_size)


class PrototypeStageConfig(_Model):
    """Stage 2, prototype init: one eval-mode pass over the source train set with stage 1's model."""

    init_from: CheckpointChoice = Field("last", description="Which stage-1 checkpoint to use (release: last).")
    input_size: Size = (720, 1280)
    batch_size: int = Field(1, gt=0, description="Images per forward pass (the release uses 1).")
    max_images: int | None = Field(None, gt=0, description="Only use the first N source images (None: all).")

    _size = field_validator("input_size")(_check_size)


class MemoryBankConfig(_Model):
    """The memory-bank variant's loss (``method = "memory-bank"``), see ``docs/memory_bank.md``.

    Per step, anchors sampled from the source (ground truth; half mispredicted) and the target (confident
    pseudo labels, ``proca.threshold``) are contrasted against per-class queues of stored pixel embeddings
    and class means of a projection head's output; the batch is enqueued after the loss.
    """

    temperature: float = Field(0.1, gt=0, description="Softmax temperature of the contrast (the release: undefined).")
    base_temperature: float | None = Field(None, gt=0, description="Loss scale temperature/base; None: scale 1.")
    denominator: Literal["all", "negatives"] = Field(
        "all", description="all: SupCon over every bank entry; negatives: the released formula."
    )
    lambda_source: float = Field(1.0, ge=0, description="Weight of the source anchors' contrastive term.")
    lambda_target: float = Field(1.0, ge=0, description="Weight of the target anchors' contrastive term.")
    embedding_dim: int = Field(256, gt=0, description="Channels D of the projection head's output.")
    hidden_dim: int = Field(2048, gt=0, description="Channels of the projection head's hidden layer.")
    head_lr_mult: float = Field(10.0, gt=0, description="Learning-rate multiplier of the projection head.")
    pixel_queue_size: int = Field(1000, gt=0, description="Stored pixel embeddings per class.")
    prototype_queue_size: int = Field(1000, gt=0, description="Stored class means per class.")
    pixels_per_class: int = Field(10, ge=0, description="Pixels enqueued per class, step and process.")
    max_anchors_per_class: int = Field(10, ge=0, description="Anchors per class and domain per forward pass.")
    min_pixels_per_class: int = Field(11, ge=1, description="Classes with fewer labelled pixels give no anchor.")


class ProcaStageConfig(_SolverFields):
    """Stage 3, ProCA adaptation: supervised source loss + feature- and output-level prototype contrast.

    ``batch_size`` counts source and target images together (the release's ``BATCH_SIZE // 2`` of
    each): 8 means 4 source + 4 target images per step, 1 + 1 per GPU on 4 GPUs. ``per_device_batch``
    also counts both domains (2 = one source and one target image per forward pair).
    """

    init_from: CheckpointChoice = Field("last", description="Which stage-1 checkpoint to start from (release: last).")
    iters: int = Field(90_000, gt=0)
    poly_iters: int | None = Field(90_000, gt=0)
    lr: float = Field(2.5e-4, gt=0)
    source_size: Size = (720, 1280)
    target_size: Size = (512, 1024)
    color_jitter: bool = Field(True, description="Source colour jitter (0.5, 0.5, 0.5, 0.2), grayscale 0.2, blur.")
    class_balanced: bool = True
    lovasz_weight: float = Field(0.75, ge=0)
    threshold: float = Field(0.9, description="Target pixels keep their argmax where the max score >= this.")
    threshold_mode: Literal["logit", "prob"] = Field("logit", description="The release compares the raw logit.")
    lambda_feat: float = Field(1.0, ge=0, description="Weight of the feature-level contrastive terms.")
    lambda_out: float = Field(1.0, ge=0, description="Weight of the output-level contrastive terms.")
    multi_level: bool = Field(True, description="Use the output-level prototypes too (release: MULTI_LEVEL).")
    temperature: float = Field(50.0, gt=0, description="tau; logits = cos / tau (released 50, see docs).")
    prototype_momentum: float | None = Field(
        None, ge=0, lt=1, description="None: count-weighted running mean (release); else EMA with this momentum."
    )
    memory_bank: MemoryBankConfig = Field(default_factory=MemoryBankConfig)  # type: ignore[arg-type]

    _size = field_validator("source_size", "target_size")(_check_size)

    @model_validator(mode="after")
    def _even_batch(self) -> ProcaStageConfig:
        if self.batch_size < 2 or self.batch_size % 2:
            raise ValueError(f"batch_size ({self.batch_size}) must be even: half source, half target images")
        return self


class PseudoLabelStageConfig(_Model):
    """Stage 4, pseudo labels: per-class confidence percentile thresholds, capped."""

    init_from: CheckpointChoice = Field(
        "best", description="Which stage-3 checkpoint labels the target (the release script uses model_best.pth)."
    )
    percent: float = Field(0.6, ge=0, le=1)
    cap: float = Field(0.9, gt=0, le=1)
    input_size: Size = (512, 1024)
    batch_size: int = Field(1, gt=0)

    _size = field_validator("input_size")(_check_size)


class SelfTrainingStageConfig(_SolverFields):
    """Stage 5, self-training: a fresh ImageNet-initialised model, cross entropy on the pseudo labels."""

    iters: int = Field(90_000, gt=0)
    poly_iters: int | None = Field(90_000, gt=0)
    lr: float = Field(5e-4, gt=0)
    init: Literal["imagenet", "proca"] = Field("imagenet", description="imagenet: fresh model as released.")
    input_size: Size = Field((512, 1024), description="The random crop [H, W] fed to the network.")
    scale_reference: Size | None = Field(
        None, description="Size the random scale applies to; None: the image's own (full-resolution) size, as released."
    )
    scale: tuple[float, float] = (0.5, 1.5)
    color_jitter: bool = Field(True, description="The stage-3 colour augmentations (flip p=0.5 always applies).")

    _size = field_validator("input_size", "scale_reference")(_check_size)

    @field_validator("scale")
    @classmethod
    def _scale_order(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = SCALE_RANGE
        if not (math.isfinite(value[0]) and math.isfinite(value[1]) and low <= value[0] <= value[1] <= high):
            raise ValueError(f"scale must be [low, high] with {low:g} <= low <= high <= {high:g}, got {list(value)}")
        return value


PrototypeContrast = Literal["none", "prototype", "distribution"]


class DAFormerStageConfig(_SolverFields):
    """The ``daformer`` recipe (``proca train --recipe daformer``): one online self-training stage.

    Defaults are DAFormer's GTA5 -> Cityscapes config (``gta2cs_uda_warm_fdthings_rcs_croppl_a999_daformer_mitb5``):
    40k iterations of AdamW (the ``adamw`` section: lr 6e-5, head x10, warm-up 1500, poly 1.0), 2 source + 2
    target 512x512 crops per step, an EMA teacher (alpha 0.999) whose pseudo labels are weighted by the share
    of pixels above 0.968 and cropped (top 15 / bottom 120 rows), ClassMix of half the source classes with
    colour jitter and blur, rare-class sampling and the ImageNet feature distance on thing classes. MIC's
    masked image consistency (``mic``) and ProCA's prototype contrast (``prototype_contrast``) are off.
    See ``docs/training.md``.
    """

    iters: int = Field(40_000, gt=0)
    lr: float = Field(6e-5, gt=0, description="Base rate with optimizer sgd (AdamW takes the adamw section's).")
    poly_power: float = Field(1.0, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    batch_size: int = Field(2, gt=0, description="Source images per step (as many target images), all processes.")
    eval_every: int = Field(4000, ge=0, description="Validate student and teacher every N iterations (0: at the end).")
    source_only: bool = Field(
        False, description="Only the source terms (cross entropy, feature distance): the same run without adaptation."
    )
    keep: Literal["student", "teacher"] = Field(
        "student", description="Which network RUN/daformer.safetensors holds (DAFormer evaluates the student)."
    )
    eval_teacher: bool = Field(True, description="Also validate the EMA teacher (logged as teacher_miou).")
    source_size: Size = Field((720, 1280), description="Source resize [H, W] before the crop (SYNTHIA 760x1280).")
    target_size: Size = Field((512, 1024), description="Target resize [H, W] before the crop.")
    crop_size: Size = Field((512, 512), description="Training crop [H, W] of both domains.")
    cat_max_ratio: float = Field(
        0.75, gt=0, le=1, description="Source crops retried (10x) until no class covers more than this share."
    )
    flip: bool = Field(True, description="Random horizontal flip (p = 0.5) of both domains.")
    ema_alpha: float = Field(0.999, ge=0, lt=1, description="Teacher EMA: min(1 - 1/(t+1), alpha).")
    pseudo_threshold: float = Field(0.968, ge=0, le=1, description="Teacher confidence counted in the pseudo weight.")
    pseudo_ignore_top: int = Field(15, ge=0, description="Rows at the top of a target crop with pseudo weight 0.")
    pseudo_ignore_bottom: int = Field(120, ge=0, description="Rows at the bottom with pseudo weight 0.")
    mix: Literal["class", "none"] = Field("class", description="class: DACS ClassMix of source classes into target.")
    color_jitter_strength: float = Field(0.2, ge=0, description="Brightness/contrast/saturation/hue strength s.")
    color_jitter_probability: float = Field(
        0.2, ge=0, le=1, description="As DAFormer: jitter is applied when u ~ U(0,1) exceeds this (p = 0.8)."
    )
    blur: bool = Field(True, description="Gaussian blur (p = 0.5, sigma ~ U(0.15, 1.15)) of mixed images.")
    rcs: bool = Field(True, description="Rare-class sampling of source images (needs the label info).")
    rcs_temperature: float = Field(0.01, gt=0, description="T of p_c = softmax((1 - f_c) / T).")
    rcs_min_pixels: int = Field(3000, ge=0, description="An image is sampled for class c if it has more pixels of c.")
    rcs_min_crop_ratio: float = Field(
        0.5, ge=0, description="Class-aware crop: retried (10x) until it holds > ratio x min_pixels of c."
    )
    fd_lambda: float = Field(0.005, ge=0, description="Weight of the ImageNet feature distance (0: off).")
    fd_classes: tuple[int, ...] | None = Field(
        (6, 7, 11, 12, 13, 14, 15, 16, 17, 18), description="Train ids the distance applies to (None: all pixels)."
    )
    fd_scale_min_ratio: float = Field(
        0.75, ge=0, le=1, description="A feature pixel counts when one class covers this share of its label patch."
    )
    mic: bool = Field(False, description="MIC: masked image consistency on colour-augmented target images.")
    mic_block_size: int = Field(64, gt=0, description="Side of the square mask patches in pixels.")
    mic_ratio: float = Field(0.7, ge=0, lt=1, description="Share of patches masked.")
    mic_lambda: float = Field(1.0, ge=0, description="Weight of the masked loss.")
    mic_color_aug: bool = Field(True, description="Colour jitter and blur before masking (MIC's separatetrgaug).")
    prototype_contrast: PrototypeContrast = Field(
        "none", description="none; prototype: ProCA's prototype contrast; distribution: SePiCo-style mean + variance."
    )
    contrast_weight: float = Field(1.0, ge=0, description="Weight of the contrast term.")
    contrast_temperature: float = Field(
        50.0, gt=0, description="Temperature: prototype divides the cosine (ProCA: 50); distribution the logits."
    )
    contrast_start_iter: int = Field(0, ge=0, description="The contrast term is added from this iteration on.")
    prototype_momentum: float | None = Field(
        0.1, gt=0, le=1, description="EMA weight of a batch mean in the prototypes (None: running mean)."
    )
    distribution_ratio: float = Field(1.0, ge=0, description="Scale of the variance term (SePiCo's ratio).")

    _size = field_validator("source_size", "target_size", "crop_size")(_check_size)


class EvalConfig(_Model):
    """Validation on the target val split between and after stages."""

    input_size: Size = (512, 1024)
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    batch_size: int = Field(1, gt=0)
    max_images: int | None = Field(None, gt=0, description="Only evaluate the first N val images (None: all).")

    _size = field_validator("input_size")(_check_size)

    @field_validator("scales")
    @classmethod
    def _scales(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        try:
            return check_scales(value, "the scales")
        except ConfigError as err:
            raise ValueError(str(err)) from None


class AdamWConfig(_Model):
    """The optimiser of transformer networks (``optimizer = "adamw"``, or ``"auto"`` with a MiT architecture).

    DAFormer's / SegFormer's values: AdamW, lr 6e-5, head at 10x, weight decay 0.01 (none on normalisation
    and position-like parameters), a linear warm-up from ``warmup_ratio`` x lr over ``warmup_iters``, then
    poly decay with power 1.0 over each stage's schedule. Used by every training stage of the run.
    """

    lr: float = Field(6e-5, gt=0, description="Base learning rate of the encoder.")
    head_lr_mult: float = Field(10.0, gt=0, description="Learning-rate multiplier of the decode head.")
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_iters: int = Field(1500, ge=0, description="Linear warm-up iterations at the start of each stage.")
    warmup_ratio: float = Field(1e-6, gt=0, le=1, description="The warm-up starts at this fraction of the rate.")
    poly_power: float = Field(1.0, ge=0)


class TrainConfig(_Model):
    """The whole recipe: data, model, run-time options and one sub-model per stage."""

    src: str = Field(
        "gtav",
        description="Labelled source: gtav, synthia or a dataset card with labels (.yaml/.yml/.json; recorded as "
        "an absolute path).",
    )
    tgt: str = Field(
        "cityscapes",
        description="Unlabelled target: a built-in dataset (cityscapes), a dataset card (.yaml/.yml/.json) or a "
        "folder/glob of images (recorded as an absolute path).",
    )
    tgt_val: str | None = Field(
        None,
        description="Labelled data to validate on: a built-in dataset, a dataset card with labels or a Cityscapes "
        "folder. None: the target's own labels (cityscapes val, a labelled card); a folder target has none, so "
        "validation is skipped and each stage's last checkpoint is used.",
    )
    class_set: Literal["cityscapes19", "synthia16"] = "cityscapes19"
    method: Literal["prototype", "memory-bank"] = Field(
        "prototype", description="Adaptation loss of the proca stage: prototype (the paper) or memory-bank."
    )
    arch: str = "deeplabv2_resnet101"
    norm: Literal["batch", "frozen"] = "batch"
    optimizer: Literal["auto", "sgd", "adamw"] = Field(
        "auto", description="auto: the architecture's family (SGD for DeepLabV2, AdamW for MiT networks)."
    )
    seed: int = 0
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    deterministic: bool = Field(True, description="Deterministic kernels (exact resume on CPU).")
    num_workers: int = Field(4, ge=0, description="DataLoader worker processes per training process.")
    checkpoint_every: int = Field(1000, gt=0, description="Write resumable state every N iterations.")
    log_every: int = Field(20, gt=0)
    max_nonfinite: int = Field(5, gt=0, description="Stop after this many non-finite losses in a row.")
    source: SourceStageConfig = Field(default_factory=SourceStageConfig)  # type: ignore[arg-type]
    prototypes: PrototypeStageConfig = Field(default_factory=PrototypeStageConfig)  # type: ignore[arg-type]
    proca: ProcaStageConfig = Field(default_factory=ProcaStageConfig)  # type: ignore[arg-type]
    pseudo_label: PseudoLabelStageConfig = Field(default_factory=PseudoLabelStageConfig)  # type: ignore[arg-type]
    ssl: SelfTrainingStageConfig = Field(default_factory=SelfTrainingStageConfig)  # type: ignore[arg-type]
    daformer: DAFormerStageConfig = Field(default_factory=DAFormerStageConfig)  # type: ignore[arg-type]
    eval: EvalConfig = Field(default_factory=EvalConfig)  # type: ignore[arg-type]
    adamw: AdamWConfig = Field(default_factory=AdamWConfig)  # type: ignore[arg-type]

    @field_validator("src")
    @classmethod
    def _known_source(cls, value: str) -> str:
        from proca.data.cards import is_card_path
        from proca.data.targets import canonical_spec

        if value in ("gtav", "synthia"):
            return value
        if is_card_path(value):
            return canonical_spec(value)
        raise ValueError(f"--src {value}: give gtav, synthia or a dataset card with labels (.yaml/.yml/.json)")

    @field_validator("tgt", "tgt_val")
    @classmethod
    def _canonical_target(cls, value: str | None) -> str | None:
        from proca.data.targets import canonical_spec

        if value is None:
            return None
        if not value.strip():
            raise ValueError("give a built-in dataset name, a dataset card or a folder/glob of images")
        return canonical_spec(value)

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str) -> str:
        from proca.models import MODEL_BUILDERS

        if value not in MODEL_BUILDERS:
            raise ValueError(f"unknown architecture {value!r}; valid: {', '.join(MODEL_BUILDERS)}")
        return value

    @model_validator(mode="after")
    def _class_set_matches_source(self) -> TrainConfig:
        if self.source_key == "card":
            return self  # a card's labels map by name to either class set
        expected = "synthia16" if self.src == "synthia" else "cityscapes19"
        if self.class_set != expected:
            raise ValueError(f"class_set {self.class_set!r} does not fit src {self.src!r}; use {expected!r}")
        return self

    @property
    def source_key(self) -> str:
        """``gtav``, ``synthia``, or ``card`` for a dataset card (names the generated label info file)."""
        return self.src if self.src in ("gtav", "synthia") else "card"

    @property
    def num_classes(self) -> int:
        """Classes the model predicts."""
        return 16 if self.class_set == "synthia16" else 19


def _preset(src: Literal["gtav", "synthia"]) -> dict[str, Any]:
    """What a preset sets besides the field defaults (which are the released GTA5 -> Cityscapes recipe)."""
    if src == "gtav":
        return {"src": "gtav", "tgt": "cityscapes"}
    size = [760, 1280]  # SYNTHIA RAND-CITYSCAPES images are 1280x760
    return {
        "src": "synthia",
        "tgt": "cityscapes",
        "class_set": "synthia16",
        "source": {"input_size": size},
        "prototypes": {"input_size": size},
        "proca": {"source_size": size},
        # DAFormer's SYNTHIA config: 1280x760 source; the thing classes in SYNTHIA16 train ids
        "daformer": {"source_size": size, "fd_classes": [6, 7, 10, 11, 12, 13, 14, 15]},
    }


def _presets() -> dict[str, dict[str, Any]]:
    from proca.data.registry import TARGET_NAMES

    out: dict[str, dict[str, Any]] = {}
    for src in ("gtav", "synthia"):
        for tgt in TARGET_NAMES:  # other targets use the <src> -> cityscapes recipe with their own images
            out[f"{src}->{tgt}"] = {**_preset(src), "tgt": tgt}
    return out


PRESETS: dict[str, dict[str, Any]] = _presets()
"""The released recipes, keyed ``"<src>-><tgt>"``: only what differs from the fields' defaults (the defaults
are the released GTA5 -> Cityscapes hyper-parameters; every default lives on its pydantic field). A built-in
target other than Cityscapes (:data:`proca.data.registry.TARGET_NAMES`) uses the ``<src> -> cityscapes`` recipe."""


def preset(src: str, tgt: str = "cityscapes") -> dict[str, Any]:
    """Return a deep copy of the preset for ``src -> tgt`` as a plain dict.

    A target without a preset of its own (a dataset card, a folder/glob of images, a built-in dataset other
    than Cityscapes) gets the ``<src>->cityscapes`` recipe with ``tgt`` set to it: its images are resized to
    the same target sizes.

    Raises:
        ConfigError: no preset for that pair.
    """
    from proca.data.cards import is_card_path

    if is_card_path(src):  # a labelled card as the source: the GTA5 recipe, with the card's images and labels
        data = preset("gtav", tgt)
        data["src"] = src
        return data
    key = f"{src}->{tgt}"
    if key not in PRESETS and f"{src}->cityscapes" in PRESETS:
        data = copy.deepcopy(PRESETS[f"{src}->cityscapes"])
        data["tgt"] = tgt
        return data
    if key not in PRESETS:
        raise ConfigError(
            f"no preset for --src {src} --tgt {tgt}; valid pairs: {', '.join(PRESETS)} (--src also takes a dataset "
            "card, --tgt a card or a folder of images)."
        )
    return copy.deepcopy(PRESETS[key])


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is Union:
        for arg in get_args(annotation):
            sub = _submodel(arg)
            if sub is not None:
                return sub
    return None


def config_keys(model: type[BaseModel] = TrainConfig, prefix: str = "") -> list[str]:
    """Every valid dotted key of ``model`` (leaves and sections), e.g. ``proca.temperature``."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        keys.append(path)
        sub = _submodel(field.annotation)
        if sub is not None:
            keys.extend(config_keys(sub, f"{path}."))
    return keys


def _unknown_key_error(path: str, valid_here: Iterable[str], source: str) -> ConfigError:
    valid_here = list(valid_here)
    parent = path.rsplit(".", 1)[0] + "." if "." in path else ""
    leaf = path.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, valid_here, n=1, cutoff=0.5)
    if not close:
        hint = f"valid keys{' in ' + parent.rstrip('.') if parent else ''}: {', '.join(valid_here)}."
    else:
        hint = f"did you mean {parent + close[0]!r}?"
    return ConfigError(f"unknown config key {path!r} ({source}); {hint}")


def _check_keys(data: Mapping[str, Any], model: type[BaseModel], source: str, prefix: str = "") -> None:
    fields = model.model_fields
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            raise _unknown_key_error(path, fields, source)
        sub = _submodel(fields[key].annotation)
        if sub is not None:
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {path!r} ({source}) is a section; give a table/mapping of its keys.")
            _check_keys(value, sub, source, f"{path}.")


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (``.toml``), JSON (``.json``) or YAML (``.yaml``/``.yml``) config file into a dict.

    Raises:
        ConfigError: unknown suffix, unreadable file or a syntax error.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"--config {path}: cannot read the file ({err.strerror}).") from None
    try:
        if suffix == ".toml":
            import tomllib

            data: Any = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"--config {path}: unknown format {suffix!r}; use .toml, .json, .yaml or .yml.")
    except ConfigError:
        raise
    except Exception as err:  # tomllib.TOMLDecodeError, json.JSONDecodeError, yaml.YAMLError
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"--config {path}: not valid {suffix.lstrip('.').upper()} ({first}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: the top level must be a table/mapping of config keys.")
    return data


def _parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides in place (values parsed as YAML/JSON: ``0.1``, ``[512, 1024]``, ``null``).

    Raises:
        ConfigError: an override without ``=``, or a key that does not exist (with the closest valid key).
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} is not key.path=value, for example --set proca.temperature=0.1.")
        key, _, raw = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        model: type[BaseModel] = TrainConfig
        node = data
        for depth, part in enumerate(parts):
            path = ".".join(parts[: depth + 1])
            if part not in model.model_fields:
                raise _unknown_key_error(path, model.model_fields, f"--set {item}")
            sub = _submodel(model.model_fields[part].annotation)
            if depth == len(parts) - 1:
                value = _parse_value(raw)
                if sub is not None and not isinstance(value, Mapping):
                    raise ConfigError(f"--set {item!r}: {path!r} is a section; set one of its keys, e.g. {path}.KEY=.")
                node[part] = value
            else:
                if sub is None:
                    raise ConfigError(f"--set {item!r}: {path!r} is a value, not a section.")
                model = sub
                node = node.setdefault(part, {})
    return data


def _validate(data: Mapping[str, Any], source: str) -> TrainConfig:
    _check_keys(data, TrainConfig, source)
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"] if not isinstance(p, int)) or "config"
        msg = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"config key {loc!r} ({source}): {msg}.") from None


TRAIN_OPTIONS: dict[str, tuple[str, ...]] = {
    "arch": ("arch",),
    "method": ("method",),
    "seed": ("seed",),
    "amp": ("amp",),
    "channels_last": ("channels_last",),
    "checkpoint_every": ("checkpoint_every",),
    "tgt_val": ("tgt_val",),
    "iters": ("source.iters", "proca.iters", "ssl.iters", "daformer.iters"),
    "batch_size": ("source.batch_size", "proca.batch_size", "ssl.batch_size", "daformer.batch_size"),
    "input_size": (
        "source.input_size",
        "prototypes.input_size",
        "proca.source_size",
        "proca.target_size",
        "pseudo_label.input_size",
        "ssl.input_size",
        "ssl.scale_reference",
        "daformer.source_size",
        "daformer.target_size",
        "daformer.crop_size",
        "eval.input_size",
    ),
}
"""The ``proca train`` options that set config keys: option -> the keys it sets. The one table of them.

An option the user did not give (None) sets nothing, so a ``--config`` file or ``--set`` holds; one that
was given overrides both. ``iters`` also keeps each stage's poly schedule at the preset's ratio to its stop
iteration (the source stage still stops at 64% of its schedule).
"""


def _set_key(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def _get_key(data: Mapping[str, Any], key: str, default: Any = None) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def apply_options(data: dict[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """Apply the given (not None) :data:`TRAIN_OPTIONS` to a config dict in place.

    Raises:
        ConfigError: an option that is not in the table.
    """
    defaults = TrainConfig.model_construct()  # field defaults, for a stage whose poly length is not in ``data``
    for name, value in options.items():
        if name not in TRAIN_OPTIONS:
            raise ConfigError(f"{name!r} is not a train option; valid: {', '.join(TRAIN_OPTIONS)}.")
        if value is None:
            continue
        if name == "input_size":
            value = [int(value[0]), int(value[1])]
        for key in TRAIN_OPTIONS[name]:
            if name == "iters":
                stage = key.split(".")[0]
                field_defaults = getattr(defaults, stage)
                old_iters = _get_key(data, f"{stage}.iters", field_defaults.iters)
                old_poly = _get_key(data, f"{stage}.poly_iters", field_defaults.poly_iters)
                if old_poly is not None and old_iters:
                    _set_key(data, f"{stage}.poly_iters", max(value, math.ceil(value * old_poly / old_iters)))
            _set_key(data, key, value)
    return data


def resolve_config(
    src: str = "gtav",
    tgt: str = "cityscapes",
    *,
    config_file: str | Path | None = None,
    overrides: Sequence[str] = (),
    base: Mapping[str, Any] | None = None,
    **options: Any,
) -> TrainConfig:
    """Resolve the run's configuration: preset < ``config_file`` < ``overrides`` < the given options.

    Args:
        src, tgt: the dataset pair choosing the preset.
        base: a whole config to start from instead of the preset (a resumed run's ``RUN/config.json``).
        config_file: TOML/JSON/YAML with any subset of keys.
        overrides: ``key.path=value`` strings (``--set``).
        options: :data:`TRAIN_OPTIONS` the user gave (None: not given, keeps the layers below).

    Raises:
        ConfigError: unknown keys or options (with a suggestion), invalid values or cross-field violations.
    """
    data = preset(src, tgt) if base is None else copy.deepcopy(dict(base))
    if config_file is not None:
        loaded = load_config_file(config_file)
        _check_keys(loaded, TrainConfig, f"--config {config_file}")
        _deep_merge(data, loaded)
    apply_overrides(data, overrides)
    apply_options(data, options)
    return _validate(data, "resolved config")
