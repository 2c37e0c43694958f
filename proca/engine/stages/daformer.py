"""The ``daformer`` recipe: DAFormer's online self-training (optionally with MIC and ProCA's prototype contrast).

One stage from ImageNet weights (``proca train --recipe daformer``). Every step, for each (source, target)
micro-batch of 512x512 crops (rare-class sampled source, class-aware and ``cat_max_ratio`` crops):

1. the EMA teacher is updated from the student (``min(1 - 1/(t+1), alpha)``; a copy at t = 0);
2. source: cross entropy on the ground truth, plus the ImageNet feature distance of the thing classes
   between the student's and a frozen ImageNet copy's last encoder map (``fd_lambda``);
3. target: the teacher's pseudo labels, weighted by the share of pixels above ``pseudo_threshold`` and
   zeroed in the top/bottom rows; ClassMix pastes half of the source classes onto the target image,
   followed by colour jitter and blur; pixel-weighted cross entropy on the mixed image;
4. MIC (``mic``): the colour-augmented target image with 70 % of its 64x64 patches masked, cross entropy
   against the same pseudo labels and weights;
5. ``prototype_contrast``: class prototypes (or class means and variances) of the teacher's head features,
   updated online from source (ground truth) and confident target pixels, and the contrast of the student's
   source and mixed features against them.

The terms are summed and back-propagated once (gradient accumulation, AMP and the non-finite guard of
:func:`~proca.engine.trainer.accumulate_and_step`). The teacher, the ImageNet copy, the prototypes and the
rare-class probabilities are part of the resumable state. ``RUN/daformer.safetensors`` holds the student
(``keep = "student"``, what DAFormer evaluates) or the teacher.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from proca.config import DAFormerStageConfig
from proca.engine.context import RunContext
from proca.engine.setup import build_solver, build_stage_model, make_plan, prepare_for_training
from proca.engine.stages import daformer_ops as ops
from proca.engine.stages.base import step_context
from proca.engine.streams import (
    STREAM_IDS,
    Stream,
    sample_seed,
    step_batches,
    training_workers,
    uniform_stream,
)
from proca.engine.trainer import LossTerms, StepResult, TrainingStage, accumulate_and_step
from proca.errors import CheckpointError, ConfigError, DataError

__all__ = ["DAFormerCrops", "DAFormerStage", "EncoderHeadForward", "teacher_mode"]

IGNORE = 255
Pair = tuple[dict[str, Any], dict[str, Any]]


class EncoderHeadForward(nn.Module):
    """``forward(x) -> (head feature, logits, last encoder map)`` of a MiT segmenter, so DDP sees one forward.

    Shape:
        x (B, 3, H, W) -> (B, A, H/4, W/4), (B, C, H/4, W/4), (B, D, H/32, W/32).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        model: Any = self.model
        maps = model.backbone(x)
        features = model.decode_head.fuse(maps)
        return features, model.decode_head.classify(features), maps[-1]


def teacher_mode(teacher: nn.Module) -> None:
    """DAFormer's teacher: train mode (BatchNorm on batch statistics) without dropout or stochastic depth.

    BatchNorm's ``momentum`` is set to 0, so the teacher's forward passes leave its running statistics (an EMA
    of the student's) unchanged.
    """
    from proca.models.mix_transformer import DropPath

    teacher.train()
    for m in teacher.modules():
        if isinstance(m, (nn.Dropout, nn.Dropout2d, nn.Dropout3d, DropPath)):
            m.eval()
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.0


class DAFormerCrops(Dataset):
    """Random ``crop`` windows of a resized dataset (DAFormer's pipeline after the resize), then a flip.

    Labelled images: the crop is drawn up to 10 times until no class covers more than ``cat_max_ratio`` of its
    labelled pixels (mmseg's ``RandomCrop``). Items addressed ``image * (C + 1) + c + 1`` (rare-class
    sampling, :class:`~proca.engine.stages.daformer_ops.RareClassStream`) are cropped again, up to 10 times,
    until the crop holds more than ``class_pixels`` pixels of class ``c``. Images smaller than the crop are
    padded (image 0, label 255). Random draws come from torch's global RNG, which
    :class:`~proca.engine.streams.SeededSamples` seeds per sample.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        crop: Sequence[int],
        cat_max_ratio: float,
        flip: bool,
        num_classes: int,
        encoded: bool = False,
        class_pixels: float = 0.0,
    ) -> None:
        self.dataset = dataset
        self.crop = (int(crop[0]), int(crop[1]))
        self.cat_max_ratio = cat_max_ratio
        self.flip = flip
        self.num_classes = num_classes
        self.encoded = encoded
        self.class_pixels = class_pixels

    def __len__(self) -> int:
        n = len(self.dataset)  # type: ignore[arg-type]
        return n * (self.num_classes + 1) if self.encoded else n

    def _window(self, h: int, w: int) -> tuple[int, int]:
        y = int(torch.randint(0, h - self.crop[0] + 1, (1,)))
        x = int(torch.randint(0, w - self.crop[1] + 1, (1,)))
        return y, x

    def _cat_window(self, label: Tensor | None) -> tuple[int, int]:
        h, w = label.shape[-2:] if label is not None else self._shape
        y, x = self._window(h, w)
        if label is None or self.cat_max_ratio >= 1.0:
            return y, x
        for _ in range(10):
            part = label[y : y + self.crop[0], x : x + self.crop[1]]
            counts = torch.bincount(part[part != IGNORE].flatten(), minlength=1)
            counts = counts[counts > 0]
            if counts.numel() > 1 and float(counts.max()) / float(counts.sum()) < self.cat_max_ratio:
                break
            y, x = self._window(h, w)
        return y, x

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_index, cls = ops.RareClassStream.decode(index, self.num_classes) if self.encoded else (int(index), None)
        sample = self.dataset[image_index]
        image = sample["image"].as_subclass(Tensor).float()
        label = sample.get("label")
        label = label.as_subclass(Tensor).long() if label is not None else None
        ph, pw = max(0, self.crop[0] - image.shape[-2]), max(0, self.crop[1] - image.shape[-1])
        if ph or pw:
            image = F.pad(image, (0, pw, 0, ph), value=0.0)
            if label is not None:
                label = F.pad(label, (0, pw, 0, ph), value=IGNORE)
        self._shape = tuple(image.shape[-2:])
        y, x = self._cat_window(label)
        if cls is not None and label is not None:
            for _ in range(10):
                part = label[y : y + self.crop[0], x : x + self.crop[1]]
                if int((part == cls).sum()) > self.class_pixels:
                    break
                y, x = self._cat_window(label)
        image = image[:, y : y + self.crop[0], x : x + self.crop[1]]
        label = label[y : y + self.crop[0], x : x + self.crop[1]] if label is not None else None
        if self.flip and bool(torch.rand(()) < 0.5):
            image = image.flip(-1)
            label = label.flip(-1) if label is not None else None
        out: dict[str, Any] = {"image": image.contiguous(), "name": sample.get("name", str(image_index))}
        if label is not None:
            out["label"] = label.contiguous()
        return out


def _pixel_matrix(info: Any, num_classes: int) -> np.ndarray:
    """(N, C) pixels of each class per file of a label info, in ``info.files`` order."""
    if info.pixel_counts is None:
        raise DataError(
            "rare-class sampling needs per-class pixel counts, which this label info (the release's pickle) lacks; "
            "run `proca label-info` to write a JSON one, or set daformer.rcs=false."
        )
    out = np.zeros((len(info.files), num_classes), dtype=np.int64)
    for i, name in enumerate(info.files):
        for c, n in zip(info.file_to_classes[name], info.pixel_counts[name], strict=True):
            if 0 <= c < num_classes:
                out[i, c] = n
    return out


class DAFormerStage(TrainingStage):
    """The DAFormer/MIC stage (``cfg.daformer``), from ImageNet weights; writes ``RUN/daformer.safetensors``."""

    name = "daformer"

    def __init__(self, ctx: RunContext) -> None:
        from proca.data.transforms import IMAGENET_MEAN, IMAGENET_STD

        self.ctx = ctx
        cfg = ctx.cfg
        self.section: DAFormerStageConfig = cfg.daformer
        sec = self.section
        model = build_stage_model(ctx, None, imagenet=True)
        if not (hasattr(model, "backbone") and hasattr(getattr(model, "decode_head", None), "fuse")):
            raise ConfigError(
                f"--recipe daformer needs a Mix Transformer network (e.g. --arch daformer_mit_b5), not {cfg.arch}."
            )
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        # the teacher and the ImageNet copy are taken before the student is moved or wrapped
        self.teacher: nn.Module = copy.deepcopy(model)
        self.imagenet: nn.Module | None = copy.deepcopy(model.backbone) if sec.fd_lambda > 0 else None
        for module in (self.teacher, self.imagenet):
            if module is not None:
                module.to(ctx.device)
                for p in module.parameters():
                    p.requires_grad_(False)
        teacher_mode(self.teacher)
        if self.imagenet is not None:
            self.imagenet.eval()
        plan = make_plan(ctx, sec.batch_size, sec.per_device_batch)
        optimizer, self.schedule = build_solver(ctx, model, sec)
        net = prepare_for_training(ctx, model, forward=EncoderHeadForward(model))
        self.sc = step_context(ctx, net, model, optimizer, plan)
        self.estimator: Any = None
        if sec.prototype_contrast == "prototype":
            from proca.losses import PrototypeContrastiveLoss
            from proca.prototypes import PrototypeEstimator

            self.estimator = PrototypeEstimator(cfg.num_classes, model.feature_dim, momentum=sec.prototype_momentum)
            self.pcl = PrototypeContrastiveLoss(temperature=sec.contrast_temperature)
        elif sec.prototype_contrast == "distribution":
            from proca.prototypes import DistributionEstimator

            self.estimator = DistributionEstimator(cfg.num_classes, model.feature_dim)
        if self.estimator is not None:
            self.estimator.to(ctx.device)
        self.rcs_probs = torch.zeros(cfg.num_classes, dtype=torch.float64)
        self.streams = self._streams(plan.global_batch)

    # ------------------------------------------------------------------------------------------- data

    def _streams(self, global_batch: int) -> list[Stream]:
        from proca.data.transforms import target_train_transform
        from proca.engine.streams import source_dataset, target_dataset

        ctx, sec, c = self.ctx, self.section, self.ctx.cfg.num_classes
        crops: dict[str, Any] = {
            "crop": sec.crop_size,
            "cat_max_ratio": sec.cat_max_ratio,
            "flip": sec.flip,
            "num_classes": c,
        }
        src_id, tgt_id = STREAM_IDS["daformer_source"], STREAM_IDS["daformer_target"]
        if sec.rcs:
            from proca.data.label_info import read_label_info

            if ctx.label_info is None:
                raise DataError("rare-class sampling needs the source label info; run `proca label-info` first.")
            info = read_label_info(ctx.label_info)
            rcs = ops.RareClassStream(
                _pixel_matrix(info, c),
                temperature=sec.rcs_temperature,
                min_pixels=sec.rcs_min_pixels,
                seed=ctx.cfg.seed,
                stream=src_id,
            )
            self.rcs_probs = torch.from_numpy(rcs.probs.copy())
            base = source_dataset(ctx, size=sec.source_size, jitter=False, files=info.files)
            base.transform = target_train_transform((sec.source_size[0], sec.source_size[1]))  # type: ignore[attr-defined]
            dataset = DAFormerCrops(
                base, encoded=True, class_pixels=sec.rcs_min_pixels * sec.rcs_min_crop_ratio, **crops
            )
            source = Stream(dataset, rcs, src_id)
        else:
            base = source_dataset(ctx, size=sec.source_size, jitter=False)
            base.transform = target_train_transform((sec.source_size[0], sec.source_size[1]))  # type: ignore[attr-defined]
            dataset = DAFormerCrops(base, **crops)
            source = Stream(dataset, uniform_stream(len(dataset), seed=ctx.cfg.seed, stream=src_id), src_id)
        target = DAFormerCrops(target_dataset(ctx, size=sec.target_size), **crops)
        return [source, Stream(target, uniform_stream(len(target), seed=ctx.cfg.seed, stream=tgt_id), tgt_id)]

    def batches(self, start: int) -> Iterator[Any]:
        workers = training_workers(self.ctx, announce=start == 0)
        stream = step_batches(
            self.ctx, self.sc.plan, self.streams, start=start, end=self.section.iters, num_workers=workers
        )
        yield from enumerate(stream, start)

    # ------------------------------------------------------------------------------------------- step

    def _sync_student_buffers(self) -> None:
        """Rank 0's BatchNorm statistics on every rank (identical under SyncBatchNorm; on CPU each rank's own)."""
        if dist.is_available() and dist.is_initialized():
            for b in self.sc.model.buffers():
                dist.broadcast(b, src=0)

    def _augment(self, image: Tensor, gen: torch.Generator) -> Tensor:
        sec = self.section
        return ops.strong_augment(
            image,
            gen,
            jitter_strength=sec.color_jitter_strength,
            jitter_probability=sec.color_jitter_probability,
            blur=sec.blur,
            mean=self.mean,
            std=self.std,
        )

    def train_step(self, item: tuple[int, list[Pair]]) -> StepResult:
        step, micro = item
        sec, sc = self.section, self.sc
        self._sync_student_buffers()
        teacher_mode(self.teacher)
        ops.ema_update(self.teacher, sc.model, ops.ema_weight(sec.ema_alpha, step))
        seed, b = self.ctx.cfg.seed, sc.plan.global_batch

        def compute(entry: tuple[int, Pair]) -> LossTerms:
            k, (src, tgt) = entry
            gens = [
                torch.Generator().manual_seed(sample_seed(seed, STREAM_IDS["daformer_mix"], step * b + j))
                for j in sc.plan.micro_batches[k]
            ]
            return self._losses(step, gens, sc.images(src), sc.labels(src), sc.images(tgt))

        # the student's dropout and stochastic depth draw from the global RNG: seeded per step and rank, so a
        # resumed run draws what the uninterrupted one did (rebuilding the data loader draws from it too)
        devices = [sc.device] if sc.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=sc.device.type):
            torch.manual_seed(
                sample_seed(seed, STREAM_IDS["daformer_dropout"], step * sc.plan.world_size + sc.plan.rank)
            )
            return accumulate_and_step(sc, list(enumerate(micro)), compute)

    def _losses(self, step: int, gens: list[torch.Generator], src: Tensor, src_lbl: Tensor, tgt: Tensor) -> LossTerms:
        sec, sc, c = self.section, self.sc, self.ctx.cfg.num_classes
        terms: LossTerms = {}
        with sc.autocast():
            s_feat, s_logits, s_last = sc.net(src)
        terms["src_ce"] = (ops.weighted_cross_entropy(s_logits, src_lbl), 1.0)
        if self.imagenet is not None:
            with torch.no_grad(), sc.autocast():
                imnet_last = self.imagenet(src)[-1]
            fd = ops.feature_distance(
                s_last, imnet_last, src_lbl, classes=sec.fd_classes, min_ratio=sec.fd_scale_min_ratio, num_classes=c
            )
            terms["feat_dist"] = (fd, sec.fd_lambda)
        if sec.source_only:
            return terms
        with torch.no_grad(), sc.autocast():
            t_feat, t_logits = self.teacher.forward_features(tgt)  # type: ignore[operator]
        t_up = F.interpolate(t_logits.float(), size=tgt.shape[-2:], mode="bilinear", align_corners=False)
        pl, pw, confident = ops.pseudo_labels(
            t_up, sec.pseudo_threshold, ignore_top=sec.pseudo_ignore_top, ignore_bottom=sec.pseudo_ignore_bottom
        )
        masks = [
            ops.class_mix_mask(src_lbl[i], gens[i]) if sec.mix == "class" else torch.zeros_like(pw[i])
            for i in range(src.shape[0])
        ]
        mixed = torch.stack([self._augment(ops.mix(m, src[i], tgt[i]), gens[i]) for i, m in enumerate(masks)])
        mixed_lbl = torch.stack([ops.mix(m, src_lbl[i], pl[i]) for i, m in enumerate(masks)])
        mixed_w = torch.stack([ops.mix(m, torch.ones_like(pw[i]), pw[i]) for i, m in enumerate(masks)])
        if sc.channels_last:
            mixed = mixed.contiguous(memory_format=torch.channels_last)
        with sc.autocast():
            m_feat, m_logits, _ = sc.net(mixed)
        terms["mix_ce"] = (ops.weighted_cross_entropy(m_logits, mixed_lbl, mixed_w), 1.0)
        if sec.mic:
            masked = []
            for i in range(tgt.shape[0]):
                image = self._augment(tgt[i], gens[i]) if sec.mic_color_aug else tgt[i]
                cells = ops.block_mask((1, *tgt.shape[-2:]), sec.mic_block_size, sec.mic_ratio, gens[i])
                masked.append(image * cells[0].to(image.device, image.dtype))
            with sc.autocast():
                _, k_logits, _ = sc.net(torch.stack(masked))
            terms["mic_ce"] = (ops.weighted_cross_entropy(k_logits, pl, pw), sec.mic_lambda)
        if self.estimator is not None:
            terms["contrast"] = self._contrast(
                step, src, src_lbl, s_feat, m_feat, t_feat, masks, pl, confident & (pw > 0)
            )
        return terms

    def _contrast(
        self,
        step: int,
        src: Tensor,
        src_lbl: Tensor,
        s_feat: Tensor,
        m_feat: Tensor,
        t_feat: Tensor,
        masks: list[Tensor],
        pl: Tensor,
        trusted: Tensor,
    ) -> tuple[Tensor, float]:
        """Prototype (or distribution) update from the teacher's features, then the student's contrast term."""
        from proca.prototypes import downsample_labels

        sec, sc = self.section, self.sc
        assert self.estimator is not None
        with torch.no_grad(), sc.autocast():
            ts_feat, _ = self.teacher.forward_features(src)  # type: ignore[operator]
        tgt_lbl = torch.where(trusted, pl, torch.full_like(pl, IGNORE))
        mixed_lbl = torch.stack([ops.mix(m, src_lbl[i], tgt_lbl[i]) for i, m in enumerate(masks)])
        size = s_feat.shape[-2:]
        src_small, tgt_small = downsample_labels(src_lbl, size), downsample_labels(tgt_lbl, t_feat.shape[-2:])
        mixed_small = downsample_labels(mixed_lbl, m_feat.shape[-2:])
        distribution = sec.prototype_contrast == "distribution"
        prep = (lambda f: F.normalize(f.float(), dim=1)) if distribution else (lambda f: f.float())
        self.estimator.update(prep(t_feat), tgt_small)
        self.estimator.update(prep(ts_feat), src_small)
        if step < sec.contrast_start_iter:
            return s_feat.float().sum() * 0.0, 0.0
        if distribution:
            from proca.losses import distribution_contrastive_loss

            mean, var = self.estimator.mean, self.estimator.var
            loss = s_feat.new_zeros((), dtype=torch.float32)
            for f, y in ((s_feat, src_small), (m_feat, mixed_small)):
                loss = loss + distribution_contrastive_loss(
                    f.float(), y, mean, var, temperature=sec.contrast_temperature, ratio=sec.distribution_ratio
                )
        else:
            protos = self.estimator.prototypes.detach()
            loss = self.pcl(features=s_feat.float(), labels=src_small, prototypes=protos) + self.pcl(
                features=m_feat.float(), labels=mixed_small, prototypes=protos
            )
        assert isinstance(loss, Tensor)
        return loss, sec.contrast_weight

    # ------------------------------------------------------------------------------------------ state

    def kept_model(self) -> nn.Module:
        return self.teacher if self.section.keep == "teacher" else self.sc.model

    def extra_metrics(self) -> dict[str, Any]:
        if not self.section.eval_teacher:
            return {}
        from proca.engine.hooks import validate

        other, name = (self.sc.model, "student") if self.section.keep == "teacher" else (self.teacher, "teacher")
        metrics = validate(self.ctx, other, progress=False)
        self.sc.model.train()
        teacher_mode(self.teacher)
        out = {f"{name}_miou": metrics["miou"]}
        if "miou13" in metrics:
            out[f"{name}_miou13"] = metrics["miou13"]
        return out

    def checkpoint_tensors(self) -> dict[str, Tensor] | None:
        est = self.estimator
        if est is None:
            return None
        if self.section.prototype_contrast == "distribution":
            return {"feature.prototypes": est.mean, "feature.variance": est.var, "feature.counts": est.counts}
        return {"feature.prototypes": est.prototypes, "feature.counts": est.counts}

    def _groups(self) -> dict[str, dict[str, Tensor]]:
        groups = {"teacher": dict(self.teacher.state_dict(keep_vars=True))}
        if self.imagenet is not None:
            groups["imagenet"] = dict(self.imagenet.state_dict(keep_vars=True))
        return {g: {k: v.data for k, v in t.items()} for g, t in groups.items()}

    def state_tensors(self) -> dict[str, Tensor]:
        out = {f"{g}.{k}": v for g, tensors in self._groups().items() for k, v in tensors.items()}
        out["rcs.class_probs"] = self.rcs_probs
        return out

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        saved = tensors.get("rcs.class_probs")
        if saved is None or not torch.equal(saved.to(self.rcs_probs.dtype), self.rcs_probs):
            raise CheckpointError(
                "the resumable state's rare-class probabilities differ from the label info's now (was the label "
                "info regenerated?); restore it, or use --force to start over."
            )
        with torch.no_grad():
            for g, group in self._groups().items():
                for k, v in group.items():
                    v.copy_(tensors[f"{g}.{k}"])
            for k, v in (self.checkpoint_tensors() or {}).items():
                v.copy_(tensors[k])

    def synced_tensors(self) -> dict[str, dict[str, Tensor]]:
        out = self._groups()
        protos = self.checkpoint_tensors()
        if protos:
            out["prototypes"] = protos
        return out

    def step_state(self) -> list[Tensor]:
        tensors = list(self.sc.model.buffers())
        tensors += list(self._groups()["teacher"].values())
        tensors += list((self.checkpoint_tensors() or {}).values())
        return tensors
