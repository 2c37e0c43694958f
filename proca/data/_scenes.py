"""Procedural street scenes: a pinhole camera over a ground plane, facades and billboard objects.

Geometry (the street grammar) and appearance (the domain's look) are kept apart: the geometry pass
fills a canvas with label ids, material ids, base colours and depth; the appearance pass turns that
canvas into an RGB image with the domain's textures, lighting and sensor. Everything is vectorised
numpy over the whole image or an object's bounding box; no per-pixel Python loops.

World frame: X to the right, Y up, Z forward (metres). A ground point (X, 0, Z) projects to
``x = xv + f X / Z``, ``y = yh + f (hcam - Y) / Z``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np

from proca.data.classes import CITYSCAPES_LABELS, SYNTHIA_LABELS

__all__ = [
    "CLASS_MIX",
    "CLASS_PERMUTATIONS",
    "DOMAINS",
    "MATERIAL_SWAPS",
    "SHIFT_UNIT",
    "TEXTURE_SWAPS",
    "Domain",
    "render_canvas_rgb",
    "render_scene",
    "render_scene_instances",
]

Domain = Literal["gtav", "synthia", "cityscapes"]
DOMAINS: tuple[str, ...] = ("gtav", "synthia", "cityscapes")

_ID = {row.name: row.label_id for row in CITYSCAPES_LABELS}

# Materials: what a surface is made of (several per class, e.g. car body / glass / tyre).
SKY, ROAD, LANE, SIDEWALK, TERRAIN, FACADE, WINDOW, WALL, FENCE, POLE = range(10)
LIGHTBOX, LAMP, SIGN, FOLIAGE, TRUNK, SKIN, CLOTH, BODY, GLASS, TYRE, HOOD, BACKDROP = range(10, 22)
NUM_MATERIALS = 22

# Base colours (RGB in [0, 1]) per material. Source: saturated, game-like. Target: muted, camera-like,
# with shifted hues (greyer sky, olive vegetation, warmer asphalt, etc.).
_SRC = np.array(
    [
        (0.35, 0.62, 0.95),  # sky
        (0.42, 0.40, 0.45),  # road
        (0.95, 0.95, 0.92),  # lane mark
        (0.70, 0.62, 0.66),  # sidewalk
        (0.45, 0.70, 0.25),  # terrain
        (0.60, 0.55, 0.50),  # facade (replaced per instance)
        (0.25, 0.35, 0.55),  # window
        (0.62, 0.60, 0.70),  # wall
        (0.65, 0.55, 0.45),  # fence
        (0.55, 0.55, 0.58),  # pole
        (0.15, 0.15, 0.15),  # light box
        (1.00, 0.80, 0.10),  # lamp
        (0.95, 0.90, 0.10),  # sign
        (0.20, 0.55, 0.12),  # foliage
        (0.40, 0.28, 0.15),  # trunk
        (0.90, 0.70, 0.55),  # skin
        (0.60, 0.20, 0.20),  # cloth (replaced per instance)
        (0.70, 0.10, 0.10),  # vehicle body (replaced per instance)
        (0.20, 0.28, 0.40),  # vehicle glass
        (0.08, 0.08, 0.08),  # tyre
        (0.10, 0.10, 0.12),  # ego hood
        (0.55, 0.58, 0.68),  # backdrop buildings
    ],
    dtype=np.float32,
)
_TGT = np.array(
    [
        (0.70, 0.74, 0.78),  # sky: hazy, almost white
        (0.30, 0.30, 0.28),  # road: darker, warmer asphalt
        (0.75, 0.75, 0.70),  # lane mark: worn
        (0.52, 0.52, 0.48),  # sidewalk: grey concrete
        (0.55, 0.55, 0.30),  # terrain: dry olive grass
        (0.55, 0.50, 0.45),  # facade
        (0.30, 0.30, 0.28),  # window: dark, reflective grey
        (0.50, 0.46, 0.40),  # wall
        (0.45, 0.42, 0.38),  # fence
        (0.35, 0.35, 0.33),  # pole
        (0.25, 0.25, 0.22),  # light box
        (0.90, 0.55, 0.20),  # lamp
        (0.85, 0.85, 0.80),  # sign
        (0.30, 0.38, 0.16),  # foliage: dark olive
        (0.30, 0.25, 0.20),  # trunk
        (0.80, 0.62, 0.50),  # skin
        (0.30, 0.30, 0.32),  # cloth
        (0.40, 0.40, 0.42),  # vehicle body
        (0.15, 0.17, 0.18),  # vehicle glass
        (0.12, 0.12, 0.12),  # tyre
        (0.20, 0.20, 0.22),  # ego hood
        (0.62, 0.62, 0.62),  # backdrop buildings
    ],
    dtype=np.float32,
)
# SYNTHIA is another engine: its own flat palette, close to GTA's but not identical.
_SYN = _SRC.copy()
_SYN[SKY] = (0.45, 0.68, 0.92)
_SYN[ROAD] = (0.38, 0.38, 0.40)
_SYN[SIDEWALK] = (0.68, 0.66, 0.60)
_SYN[FOLIAGE] = (0.25, 0.60, 0.20)
_SYN[FACADE] = (0.70, 0.60, 0.52)

# Per-instance colour lists (source: vivid game colours; target: the greys/blacks/whites of real traffic).
_BODY = {
    "src": np.array([(0.8, 0.1, 0.1), (0.1, 0.3, 0.8), (0.9, 0.8, 0.1), (0.1, 0.6, 0.2), (0.9, 0.9, 0.9),
                     (0.9, 0.45, 0.1), (0.5, 0.1, 0.6)], dtype=np.float32),
    "tgt": np.array([(0.15, 0.15, 0.16), (0.75, 0.75, 0.75), (0.45, 0.46, 0.48), (0.9, 0.9, 0.88),
                     (0.25, 0.28, 0.35), (0.45, 0.15, 0.12)], dtype=np.float32),
}  # fmt: skip
_FACADE = {
    "src": np.array([(0.75, 0.65, 0.50), (0.65, 0.45, 0.40), (0.55, 0.60, 0.65), (0.80, 0.78, 0.70),
                     (0.60, 0.50, 0.60)], dtype=np.float32),
    "tgt": np.array([(0.60, 0.55, 0.48), (0.50, 0.35, 0.30), (0.70, 0.68, 0.62), (0.42, 0.42, 0.42),
                     (0.62, 0.50, 0.38)], dtype=np.float32),
}  # fmt: skip
_CLOTH = {
    "src": np.array([(0.8, 0.2, 0.2), (0.2, 0.3, 0.8), (0.2, 0.7, 0.3), (0.9, 0.7, 0.2), (0.6, 0.2, 0.6)],
                    dtype=np.float32),
    "tgt": np.array([(0.12, 0.12, 0.14), (0.25, 0.28, 0.38), (0.45, 0.40, 0.35), (0.60, 0.60, 0.62),
                     (0.35, 0.15, 0.15)], dtype=np.float32),
}  # fmt: skip


@dataclass(frozen=True)
class _Layout:
    """Priors of the street grammar for one domain (expected counts per image and geometry ranges)."""

    hcam: tuple[float, float]
    horizon: tuple[float, float]  # fraction of H
    focal: tuple[float, float]  # fraction of W
    cars: float
    trucks: float
    buses: float
    trains: float
    motorcycles: float
    bicycles: float
    persons: float
    poles: float
    lights: float
    signs: float
    trees: float
    terrain_p: float
    wall_p: float
    fence_p: float
    building_h: tuple[float, float]
    sidewalk_w: tuple[float, float]


# fmt: off
_LAYOUTS: dict[str, _Layout] = {
    "gtav": _Layout(
        hcam=(1.4, 1.8), horizon=(0.40, 0.48), focal=(0.50, 0.60), cars=3.0, trucks=0.5, buses=0.4,
        trains=0.2, motorcycles=0.5, bicycles=0.5, persons=3.0, poles=2.5, lights=1.0, signs=1.2,
        trees=2.5, terrain_p=0.5, wall_p=0.3, fence_p=0.3, building_h=(8.0, 30.0), sidewalk_w=(2.0, 4.0),
    ),
    "cityscapes": _Layout(
        hcam=(1.2, 1.5), horizon=(0.36, 0.44), focal=(0.55, 0.65), cars=5.0, trucks=0.3, buses=0.3,
        trains=0.15, motorcycles=0.4, bicycles=1.0, persons=4.5, poles=4.0, lights=1.2, signs=1.8,
        trees=4.0, terrain_p=0.35, wall_p=0.3, fence_p=0.35, building_h=(10.0, 22.0), sidewalk_w=(2.5, 5.0),
    ),
    "synthia": _Layout(
        hcam=(4.0, 8.0), horizon=(0.18, 0.32), focal=(0.45, 0.55), cars=3.0, trucks=0.1, buses=0.5,
        trains=0.05, motorcycles=0.6, bicycles=0.6, persons=6.0, poles=2.5, lights=1.2, signs=1.2,
        trees=2.5, terrain_p=0.4, wall_p=0.35, fence_p=0.35, building_h=(8.0, 30.0), sidewalk_w=(3.0, 6.0),
    ),
}
# fmt: on

# Rare things, one of which every image is made to contain (cycling over the image index), so that
# all 19 classes occur in any split of at least len(_FEATURED) images.
_FEATURED = ("train", "bus", "truck", "motorcycle", "bicycle", "wall", "fence", "traffic light", "traffic sign")

_Mask = Callable[[np.ndarray, np.ndarray], np.ndarray]

# ``shift`` = 1 (the default) moves the target half-way from the game look to the full camera look
# (palette, layout priors, texture, lighting, sensor); 2 reaches it; beyond 2 only the texture,
# lighting and sensor terms keep growing. Measured: docs/synthetic.md.
SHIFT_UNIT = 0.5


# The class-conditional shift (``class_shift``, 0 = off, the default; 1 = full): changes of the target that
# depend on the class, so that matching global statistics (BatchNorm re-estimation) cannot undo them.
# Measured: docs/synthetic.md and docs/ablation.md.
CLASS_PERMUTATIONS: dict[str, tuple[int, int, int]] = {
    "vegetation": (1, 0, 2),  # green foliage -> red-brown (autumn); trunks too
    "terrain": (2, 1, 0),  # olive grass -> blue-grey
    "sky": (2, 0, 1),  # hazy blue-white -> pink-white
    "car": (2, 0, 1),  # tinted bodies and glass take other hues (greys stay grey)
    "person": (1, 2, 0),  # clothes and skin: other hues
}
"""Per-class colour swaps: the target's RGB channels of every pixel of the class, permuted (R, G, B) -> perm."""
MATERIAL_SWAPS: tuple[tuple[int, int], ...] = ((ROAD, SIDEWALK),)
"""Materials whose base colours trade places in the target (road takes the paving's colour and vice versa)."""
TEXTURE_SWAPS: tuple[tuple[int, int], ...] = ((ROAD, FOLIAGE), (FACADE, TERRAIN), (SKY, WALL))
"""Materials whose texture amplitudes trade places in the target (a smooth road becomes noisy like foliage...)."""
CLASS_MIX: dict[str, float] = {
    "cars": 0.4, "trucks": 0.4, "buses": 2.5, "trains": 2.0, "motorcycles": 2.0, "bicycles": 2.0,
    "persons": 2.0, "poles": 0.6, "lights": 1.5, "signs": 0.6, "trees": 0.4, "terrain_p": 2.0, "wall_p": 2.0,
    "fence_p": 0.4,
}  # fmt: skip
"""Multipliers of the target's expected object counts / probabilities: another class-frequency mix."""


def _lerp(a: np.ndarray | float, b: np.ndarray | float, t: float) -> np.ndarray:
    return np.asarray(a, dtype=np.float32) * (1.0 - t) + np.asarray(b, dtype=np.float32) * t


def _layout_for(domain: str, shift: float, class_shift: float = 0.0) -> _Layout:
    """Layout priors: the target's move from the GTA priors towards its own by ``shift`` (0: identical), then
    its class-frequency mix scaled by :data:`CLASS_MIX` with ``class_shift``."""
    if domain != "cityscapes":
        return _LAYOUTS[domain]
    a, b = _LAYOUTS["gtav"], _LAYOUTS["cityscapes"]
    t = float(np.clip(shift * SHIFT_UNIT, 0.0, 1.0))
    kw: dict[str, Any] = {}
    for fld in fields(_Layout):
        va, vb = getattr(a, fld.name), getattr(b, fld.name)
        mixed = _lerp(np.asarray(va), np.asarray(vb), t)
        kw[fld.name] = tuple(float(x) for x in mixed) if isinstance(va, tuple) else float(mixed)
    if class_shift > 0:
        for name, factor in CLASS_MIX.items():
            value = kw[name] * (1.0 + (factor - 1.0) * class_shift)
            kw[name] = min(value, 0.95) if name.endswith("_p") else value
    return _Layout(**kw)


class _Canvas:
    """Per-pixel buffers filled by the geometry pass (painter's algorithm with a depth test)."""

    def __init__(self, h: int, w: int) -> None:
        self.label = np.zeros((h, w), dtype=np.uint8)
        self.mat = np.zeros((h, w), dtype=np.uint8)
        self.color = np.zeros((h, w, 3), dtype=np.float32)
        self.shade = np.ones((h, w), dtype=np.float32)
        self.depth = np.full((h, w), np.inf, dtype=np.float32)
        self.inst = np.zeros((h, w), dtype=np.uint16)


@dataclass
class _Part:
    mask: _Mask
    label: int
    mat: int
    color: np.ndarray


def _rect(u0: float, u1: float, v0: float, v1: float) -> _Mask:
    return lambda u, v: (u >= u0) & (u < u1) & (v >= v0) & (v < v1)


def _ellipse(cu: float, cv: float, ru: float, rv: float) -> _Mask:
    return lambda u, v: ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1.0


def _ring(cu: float, cv: float, r: float, t: float) -> _Mask:
    return lambda u, v: np.abs(np.hypot(u - cu, v - cv) - r) <= t / 2


def _trapezoid(cu: float, v0: float, v1: float, hw0: float, hw1: float) -> _Mask:
    def mask(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        a = np.clip((v - v0) / (v1 - v0), 0.0, 1.0)
        return (v >= v0) & (v < v1) & (np.abs(u - cu) <= hw0 + (hw1 - hw0) * a)

    return mask


def _segment(u0: float, v0: float, u1: float, v1: float, t: float) -> _Mask:
    du, dv = u1 - u0, v1 - v0
    n2 = du * du + dv * dv

    def mask(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        a = np.clip(((u - u0) * du + (v - v0) * dv) / n2, 0.0, 1.0)
        return np.hypot(u - u0 - a * du, v - v0 - a * dv) <= t / 2

    return mask


def _both(a: _Mask, b: _Mask) -> _Mask:
    return lambda u, v: a(u, v) & b(u, v)


def _blob(cu: float, cv: float, ru: float, rv: float, rng: np.random.Generator) -> _Mask:
    """An ellipse with a wobbly outline (a tree crown)."""
    k = np.arange(2, 6)
    amp = rng.uniform(0.03, 0.12, size=k.size)
    phase = rng.uniform(0, 2 * np.pi, size=k.size)

    def mask(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        du, dv = (u - cu) / ru, (v - cv) / rv
        theta = np.arctan2(dv, du)[..., None]
        r = 1.0 + (amp * np.sin(k * theta + phase)).sum(-1)
        return du * du + dv * dv <= r * r

    return mask


class _Scene:
    """Builds one scene into a canvas."""

    def __init__(
        self, rng: np.random.Generator, size: tuple[int, int], domain: str, shift: float, index: int,
        class_shift: float = 0.0,
    ) -> None:  # fmt: skip
        self.rng = rng
        self.h, self.w = size
        self.domain = domain
        self.t = float(np.clip(shift * SHIFT_UNIT, 0.0, 1.0)) if domain == "cityscapes" else 0.0
        self.class_shift = float(class_shift) if domain == "cityscapes" else 0.0
        self.lay = _layout_for(domain, shift, self.class_shift)
        lay = self.lay
        self.hcam = rng.uniform(*lay.hcam)
        self.yh = self.h * rng.uniform(*lay.horizon)
        self.f = self.w * rng.uniform(*lay.focal)
        self.xv = self.w * (0.5 + rng.uniform(-0.08, 0.08))
        self.min_px = max(1.5, self.w / 170.0)  # thinnest structure, in pixels
        self.featured = _FEATURED[index % len(_FEATURED)]
        base = _SYN if domain == "synthia" else _SRC
        self.palette = _lerp(base, _TGT, self.t)
        if self.class_shift > 0:
            swapped = self.palette.copy()
            for m1, m2 in MATERIAL_SWAPS:
                swapped[[m1, m2]] = self.palette[[m2, m1]]
            self.palette = _lerp(self.palette, swapped, self.class_shift)
        self.canvas = _Canvas(self.h, self.w)
        self.n_inst = 0
        self.ys = np.arange(self.h, dtype=np.float32) + 0.5
        self.xs = np.arange(self.w, dtype=np.float32) + 0.5

    # ---- colours -------------------------------------------------------------------------------
    def _pick(self, table: dict[str, np.ndarray], jitter: float = 0.06) -> np.ndarray:
        rng = self.rng
        src = table["src"][rng.integers(len(table["src"]))]
        tgt = table["tgt"][rng.integers(len(table["tgt"]))]
        c = _lerp(src, tgt, self.t) * rng.uniform(1 - jitter, 1 + jitter)
        return np.clip(c, 0, 1).astype(np.float32)

    def _col(self, mat: int, jitter: float = 0.05) -> np.ndarray:
        c = self.palette[mat] * self.rng.uniform(1 - jitter, 1 + jitter, size=3)
        return np.clip(c, 0, 1).astype(np.float32)

    # ---- street layout -------------------------------------------------------------------------
    def build(self) -> _Canvas:
        rng, lay = self.rng, self.lay
        lanes = int(rng.integers(2, 5))
        lane_w = rng.uniform(3.0, 3.8)
        cam_lane = int(rng.integers(0, lanes))
        self.road_l = -(cam_lane + 0.5) * lane_w
        self.road_r = self.road_l + lanes * lane_w
        self.lane_w, self.lanes = lane_w, lanes
        self.sw_l, self.sw_r = rng.uniform(*lay.sidewalk_w, size=2)
        has_terrain = rng.random(2) < lay.terrain_p
        self.ter_l, self.ter_r = np.where(has_terrain, rng.uniform(2.0, 6.0, size=2), 0.0)
        self.xb_l = self.road_l - self.sw_l - self.ter_l - rng.uniform(0.0, 1.0)
        self.xb_r = self.road_r + self.sw_r + self.ter_r + rng.uniform(0.0, 1.0)
        self.zend = rng.uniform(70.0, 160.0)
        self._sky()
        self._ground()
        self._facades()
        self._objects()
        if self.domain == "cityscapes" and rng.random() < self.t:
            self._ego_hood()
        return self.canvas

    def _sky(self) -> None:
        c = self.canvas
        top = self._col(SKY, 0.04)
        bottom = np.clip(top * 1.25 + 0.08, 0, 1)
        a = np.clip(self.ys / max(self.yh, 1.0), 0, 1)[:, None, None]
        c.color[:] = top * (1 - a) + bottom * a
        c.label[:] = _ID["sky"]
        c.mat[:] = SKY

    def _ground(self) -> None:
        c, rng = self.canvas, self.rng
        r0 = min(self.h, max(0, int(np.floor(self.yh + 0.5))))  # first row that can be below the horizon
        rows = self.ys[r0:]
        below = (rows > self.yh + 0.5)[:, None]
        z = (self.f * self.hcam / np.where(rows > self.yh + 0.5, rows - self.yh, 1.0))[:, None]  # (h, 1)
        x = (self.xs[None, :] - self.xv) * z / self.f  # (h, W)
        visible = below & (z < c.depth[r0:])
        road = (x >= self.road_l) & (x <= self.road_r)
        side = ((x < self.road_l) & (x >= self.road_l - self.sw_l)) | (
            (x > self.road_r) & (x <= self.road_r + self.sw_r)
        )
        label = np.where(road, _ID["road"], np.where(side, _ID["sidewalk"], _ID["terrain"])).astype(np.uint8)
        mat = np.where(road, ROAD, np.where(side, SIDEWALK, TERRAIN)).astype(np.uint8)
        # Lane marks: dashed lines on the lane boundaries, solid lines along the kerbs; at least
        # ``min_px / 2`` pixels wide so they stay visible far away.
        half = np.maximum(0.08, 0.5 * self.min_px * z / self.f)
        dist = np.full_like(x, np.inf)
        for lane_x in self.road_l + self.lane_w * np.arange(1, self.lanes):
            dist = np.minimum(dist, np.abs(x - lane_x))
        dash = np.mod(z + rng.uniform(0, 9), 9.0) < 4.0
        marks = road & dash & (dist < half)
        edge = road & ((np.abs(x - self.road_l - 0.3) < half) | (np.abs(x - self.road_r + 0.3) < half))
        mat = np.where(marks | edge, LANE, mat).astype(np.uint8)
        colors = self.palette[mat] * rng.uniform(0.95, 1.05, size=(1, 1, 3)).astype(np.float32)
        # Paving texture on sidewalks: source = big clean tiles, target = small tiles.
        tile = 1.2 - 0.7 * self.t
        joints = side & ((np.mod(x, tile) < 0.06) | (np.mod(z, tile) < 0.06 * (1 + z / 20)))
        colors = np.where(joints[..., None], colors * 0.85, colors)
        c.label[r0:][visible] = label[visible]
        c.mat[r0:][visible] = mat[visible]
        c.color[r0:][visible] = colors[visible]
        c.depth[r0:][visible] = np.broadcast_to(z, x.shape)[visible]
        self.ground_r0, self.ground_x, self.ground_z = r0, x, z

    def _segments(self, zmax: float, kinds: tuple[str, ...], probs: np.ndarray) -> tuple[np.ndarray, list[str]]:
        rng = self.rng
        bounds = [rng.uniform(-5.0, 3.0)]
        while bounds[-1] < zmax:
            bounds.append(bounds[-1] + rng.uniform(8.0, 25.0))
        kind = [str(k) for k in rng.choice(kinds, size=len(bounds) - 1, p=probs)]
        return np.asarray(bounds, dtype=np.float32), kind

    def _facades(self) -> None:
        rng, lay, c = self.rng, self.lay, self.canvas
        sun_left = rng.random() < 0.5
        for side, xb in (("l", self.xb_l), ("r", self.xb_r)):
            sign = -1.0 if side == "l" else 1.0
            # Low structures at the back of the sidewalk (walls and fences), drawn in front of the facades.
            xf = (self.road_l - self.sw_l) if side == "l" else (self.road_r + self.sw_r)
            p_wall = 0.9 if self.featured == "wall" else lay.wall_p
            p_fence = 0.9 if self.featured == "fence" else lay.fence_p
            p_none = max(0.0, 2.0 - p_wall - p_fence)
            probs = np.array([p_wall, p_fence, p_none]) / (p_wall + p_fence + p_none)
            bounds, kinds = self._segments(self.zend, ("wall", "fence", "none"), probs)
            heights = np.array([rng.uniform(1.0, 2.2) if k != "none" else 0.0 for k in kinds], dtype=np.float32)
            self._plane(xf, sign, bounds, kinds, heights, shade=1.0)
            # Building facades, vegetation blocks and gaps.
            bounds, kinds = self._segments(self.zend, ("building", "vegetation", "gap"), np.array([0.72, 0.18, 0.10]))
            heights = np.array(
                [rng.uniform(*lay.building_h) if k == "building" else rng.uniform(3.0, 8.0) if k == "vegetation"
                 else 0.0 for k in kinds], dtype=np.float32)  # fmt: skip
            shade = 1.0 if (side == "l") == sun_left else 0.78
            self._plane(xb, sign, bounds, kinds, heights, shade=shade)
            # Cast shadow of this side's facades onto the ground (drawn only where lighting asks for it).
            if (side == "l") == sun_left:
                continue
            k = rng.uniform(0.3, 0.8)
            r0 = self.ground_r0
            seg = np.clip(np.searchsorted(bounds, self.ground_z[:, 0]) - 1, 0, len(kinds) - 1)
            reach = (heights[seg] * k)[:, None]
            dist = (self.ground_x - xb) * -sign
            shadow = np.isin(c.mat[r0:], (ROAD, LANE, SIDEWALK, TERRAIN)) & (dist >= 0) & (dist < reach)
            c.shade[r0:][shadow] = -1.0  # marked; the appearance pass sets the strength
        self._backdrop()

    def _plane(self, xp: float, sign: float, bounds: np.ndarray, kinds: list[str], heights: np.ndarray,
               shade: float) -> None:  # fmt: skip
        """A vertical plane X = xp made of segments along Z, each with a kind and a height."""
        c = self.canvas
        dx = (self.xs - self.xv) * sign  # depth along the plane depends on the column only
        cols = np.flatnonzero(dx > 0.5)
        if cols.size == 0:
            return
        c0, c1 = int(cols[0]), int(cols[-1]) + 1
        z1 = (self.f * abs(xp) / dx[c0:c1]).astype(np.float32)
        seg1 = np.clip(np.searchsorted(bounds, z1) - 1, 0, len(kinds) - 1)
        z = z1[None, :]
        y = self.hcam - (self.ys[:, None] - self.yh) * z / self.f
        seg = np.broadcast_to(seg1[None, :], y.shape)
        hit = (y >= 0) & (y <= heights[seg1][None, :]) & (z < c.depth[:, c0:c1]) & (z > 0.5)
        if not hit.any():
            return
        z = np.broadcast_to(z, y.shape)
        n = len(kinds)
        labels = np.zeros(n, dtype=np.uint8)
        mats = np.zeros(n, dtype=np.uint8)
        cols = np.zeros((n, 3), dtype=np.float32)
        win_cols = np.zeros((n, 3), dtype=np.float32)
        for i, k in enumerate(kinds):
            if k == "building":
                labels[i], mats[i], cols[i] = _ID["building"], FACADE, self._pick(_FACADE)
                win_cols[i] = self._col(WINDOW, 0.15)
            elif k == "vegetation":
                labels[i], mats[i], cols[i] = _ID["vegetation"], FOLIAGE, self._col(FOLIAGE, 0.12)
            elif k == "wall":
                labels[i], mats[i], cols[i] = _ID["wall"], WALL, self._col(WALL, 0.1)
            elif k == "fence":
                labels[i], mats[i], cols[i] = _ID["fence"], FENCE, self._col(FENCE, 0.1)
        s = seg[hit]
        zz, yy = z[hit], y[hit]
        col = cols[s] * shade
        mat = mats[s].copy()
        # Windows: a grid on building facades (source: large regular windows; target: smaller, denser).
        wz, wy = 3.5 - 1.0 * self.t, 3.2 - 0.6 * self.t
        win = (mats[s] == FACADE) & (yy > 2.5) & (np.mod(zz, wz) > 0.35 * wz) & (np.mod(yy, wy) > 0.35 * wy)
        win &= yy < heights[s] - 1.0
        col = np.where(win[:, None], win_cols[s] * shade, col)
        mat = np.where(win, WINDOW, mat)
        # Fences: a lattice of posts and rails.
        bars = (mats[s] == FENCE) & ((np.mod(zz, 1.2) < 0.25) | (np.mod(yy, 0.6) < 0.15))
        col = np.where(bars[:, None], col * 0.7, col)
        c.label[:, c0:c1][hit] = labels[s]
        c.mat[:, c0:c1][hit] = mat
        c.color[:, c0:c1][hit] = col
        c.depth[:, c0:c1][hit] = zz

    def _backdrop(self) -> None:
        """Buildings (or trees) closing the street far away, at depth zend."""
        c, rng = self.canvas, self.rng
        z = self.zend
        x = (self.xs - self.xv) * z / self.f
        y = (self.hcam - (self.ys - self.yh) * z / self.f)[:, None]
        edges = np.arange(self.xb_l - 30.0, self.xb_r + 30.0, 12.0, dtype=np.float32)
        hts = rng.uniform(5.0, 28.0, size=edges.size).astype(np.float32)
        veg = rng.random(edges.size) < 0.25
        seg1 = np.clip(np.searchsorted(edges, x) - 1, 0, edges.size - 1)
        hit = (y >= 0) & (y <= hts[seg1][None, :]) & (z < c.depth)
        s = np.broadcast_to(seg1[None, :], hit.shape)[hit]
        c.label[hit] = np.where(veg[s], _ID["vegetation"], _ID["building"])
        c.mat[hit] = np.where(veg[s], FOLIAGE, BACKDROP)
        bcol = self._col(BACKDROP, 0.1)
        fcol = self._col(FOLIAGE, 0.1)
        c.color[hit] = np.where(veg[s][:, None], fcol, bcol)
        c.depth[hit] = z

    # ---- objects ---------------------------------------------------------------------------------
    def _objects(self) -> None:
        rng, lay = self.rng, self.lay
        f = self.featured
        objs: list[tuple[float, float, list[_Part]]] = []

        def count(lam: float, featured: str) -> int:
            n = int(rng.poisson(lam))
            return max(n, 1) if f == featured else n

        def near_z(n: int, lo: float = 5.0, scale: float = 14.0, hi: float = 60.0) -> np.ndarray:
            return np.clip(lo + rng.exponential(scale, size=n), lo, hi)

        lane_centres = self.road_l + self.lane_w * (np.arange(self.lanes) + 0.5)
        for kind, lam in (("car", lay.cars), ("truck", lay.trucks), ("bus", lay.buses), ("train", lay.trains)):
            n = count(lam, kind)
            for z in near_z(n, 7.0 if kind != "car" else 5.0):
                if kind == "car" and rng.random() < 0.4:  # parked by the kerb
                    x = (self.road_l + 1.1) if rng.random() < 0.5 else (self.road_r - 1.1)
                else:
                    x = float(rng.choice(lane_centres)) + rng.uniform(-0.3, 0.3)
                objs.append((z, x, getattr(self, f"_{kind}")(z)))
        for kind, lam in (("motorcycle", lay.motorcycles), ("bicycle", lay.bicycles)):
            for z in near_z(count(lam, kind), 5.0, 10.0, 35.0):
                x = (self.road_r - 1.0) if rng.random() < 0.5 else (self.road_l + 1.0)
                ridden = rng.random() < (0.95 if f == kind else 0.7)
                objs.append((z, x, self._two_wheeler(z, kind, ridden)))
        for z in near_z(count(lay.persons, "person"), 4.0, 12.0, 40.0):
            if rng.random() < 0.2:
                x = rng.uniform(self.road_l, self.road_r)  # crossing
            else:
                x = (
                    (self.road_l - rng.uniform(0.3, self.sw_l - 0.3))
                    if rng.random() < 0.5
                    else (self.road_r + rng.uniform(0.3, self.sw_r - 0.3))
                )
            objs.append((z, x, self._person(z)))
        for kind, lam in (("pole", lay.poles), ("traffic light", lay.lights), ("traffic sign", lay.signs)):
            for z in near_z(count(lam, kind), 5.0, 15.0, 50.0):
                x = (self.road_l - 0.5) if rng.random() < 0.5 else (self.road_r + 0.5)
                objs.append((z, x, self._pole_thing(z, kind)))
        for z in near_z(int(rng.poisson(lay.trees)), 5.0, 16.0, 60.0):
            left = rng.random() < 0.5
            if (self.ter_l if left else self.ter_r) > 0:
                x = (self.road_l - self.sw_l - self.ter_l / 2) if left else (self.road_r + self.sw_r + self.ter_r / 2)
            else:
                x = (self.road_l - self.sw_l + 0.8) if left else (self.road_r + self.sw_r - 0.8)
            objs.append((z, x, self._tree(z)))
        objs.sort(key=lambda o: -o[0])
        for z, x, parts in objs:
            self._draw(x, z, parts)

    def _draw(self, x: float, z: float, parts: list[_Part]) -> None:
        c = self.canvas
        s = self.f / z
        xc = self.xv + x * s
        yg = self.yh + self.hcam * s
        # Bounding box from the extent (u0, u1, v_top) in metres that each object builder declares.
        u0, u1, v1 = getattr(parts, "extent", (-3.0, 3.0, 6.0))
        x0, x1 = int(np.floor(xc + u0 * s)), int(np.ceil(xc + u1 * s))
        y0, y1 = int(np.floor(yg - v1 * s)), int(np.ceil(yg + 1))
        x0, x1, y0, y1 = max(x0, 0), min(x1, self.w), max(y0, 0), min(y1, self.h)
        if x0 >= x1 or y0 >= y1:
            return
        u = ((np.arange(x0, x1, dtype=np.float32) + 0.5 - xc) / s)[None, :]
        v = ((yg - (np.arange(y0, y1, dtype=np.float32) + 0.5)) / s)[:, None]
        free = z < c.depth[y0:y1, x0:x1]
        self.n_inst += 1
        drawn = np.zeros_like(free)
        for p in parts:
            m = p.mask(u, v) & free
            if not m.any():
                continue
            c.label[y0:y1, x0:x1][m] = p.label
            c.mat[y0:y1, x0:x1][m] = p.mat
            c.color[y0:y1, x0:x1][m] = p.color
            drawn |= m
        if drawn.any():
            c.depth[y0:y1, x0:x1][drawn] = z
            c.shade[y0:y1, x0:x1][drawn] = np.abs(c.shade[y0:y1, x0:x1][drawn])
            c.inst[y0:y1, x0:x1][drawn] = self.n_inst

    def _thick(self, z: float, metres: float) -> float:
        """A width in metres, widened so it is at least ``min_px`` pixels at depth ``z``."""
        return max(metres, self.min_px * z / self.f)

    def _wheels(self, half: float, r: float, label: int) -> list[_Part]:
        tyre = self._col(TYRE, 0.1)
        return [_Part(_ellipse(sx * half, r, 0.22, r), label, TYRE, tyre) for sx in (-1, 1)]

    def _car(self, z: float) -> list[_Part]:
        rng = self.rng
        w = rng.uniform(1.7, 2.0) / 2
        hb = rng.uniform(0.9, 1.1)
        ht = hb + rng.uniform(0.45, 0.6)
        body, glass = self._pick(_BODY), self._col(GLASS, 0.1)
        lamp = np.array([0.9, 0.1, 0.1], dtype=np.float32) * (1 - 0.3 * self.t)
        lab = _ID["car"]
        parts = [
            *self._wheels(w - 0.35, 0.32, lab),
            _Part(_rect(-w, w, 0.25, hb), lab, BODY, body),
            _Part(_trapezoid(0.0, hb, ht, w - 0.08, w - 0.4), lab, BODY, body),
            _Part(_trapezoid(0.0, hb + 0.07, ht - 0.07, w - 0.2, w - 0.48), lab, GLASS, glass),
            _Part(_rect(-w + 0.08, -w + 0.35, hb - 0.3, hb - 0.12), lab, BODY, lamp),
            _Part(_rect(w - 0.35, w - 0.08, hb - 0.3, hb - 0.12), lab, BODY, lamp),
        ]
        return _with_extent(parts, -w, w, ht)

    def _truck(self, z: float) -> list[_Part]:
        rng = self.rng
        w = rng.uniform(2.3, 2.6) / 2
        h = rng.uniform(3.2, 4.0)
        box, body = self._pick(_FACADE, 0.1), self._pick(_BODY)
        lab = _ID["truck"]
        parts = [
            *self._wheels(w - 0.4, 0.45, lab),
            _Part(_rect(-w, w, 0.45, 1.0), lab, BODY, body),
            _Part(_rect(-w, w, 1.0, h), lab, BODY, box),
            _Part(_rect(-w + 0.1, w - 0.1, h - 0.25, h - 0.1), lab, BODY, box * 0.8),
        ]
        return _with_extent(parts, -w, w, h)

    def _bus(self, z: float) -> list[_Part]:
        rng = self.rng
        w = rng.uniform(2.4, 2.6) / 2
        h = rng.uniform(3.0, 3.4)
        body, glass = self._pick(_BODY), self._col(GLASS, 0.1)
        lab = _ID["bus"]
        parts = [
            *self._wheels(w - 0.45, 0.5, lab),
            _Part(_rect(-w, w, 0.35, h), lab, BODY, body),
            _Part(_rect(-w + 0.12, w - 0.12, 1.5, h - 0.45), lab, GLASS, glass),
            _Part(_rect(-0.6, 0.6, h - 0.4, h - 0.12), lab, LAMP, self._col(LAMP, 0.1)),
        ]
        return _with_extent(parts, -w, w, h)

    def _train(self, z: float) -> list[_Part]:
        rng = self.rng
        w = rng.uniform(2.4, 2.7) / 2
        h = rng.uniform(3.3, 3.7)
        body, glass = self._pick(_BODY), self._col(GLASS, 0.1)
        pole = self._col(POLE, 0.1)
        lab = _ID["train"]
        t = self._thick(z, 0.08)
        parts = [
            _Part(_rect(-w, w, 0.15, h), lab, BODY, body),
            _Part(_rect(-w + 0.15, w - 0.15, 1.2, h - 0.5), lab, GLASS, glass),
            _Part(_rect(-w, w, 0.15, 0.6), lab, BODY, body * 0.7),
            _Part(_segment(-0.6, h, 0.0, h + 1.2, t), lab, POLE, pole),
            _Part(_segment(0.6, h, 0.0, h + 1.2, t), lab, POLE, pole),
            _Part(_rect(-0.8, 0.8, h + 1.1, h + 1.1 + t), lab, POLE, pole),
        ]
        return _with_extent(parts, -w, w, h + 1.3)

    def _two_wheeler(self, z: float, kind: str, ridden: bool) -> list[_Part]:
        rng = self.rng
        lab = _ID[kind]
        facing = 1.0 if rng.random() < 0.5 else -1.0
        r = 0.33 if kind == "bicycle" else 0.32
        half = 0.55 if kind == "bicycle" else 0.7
        t = self._thick(z, 0.07 if kind == "bicycle" else 0.1)
        tyre = self._col(TYRE, 0.1)
        frame = self._pick(_BODY)
        parts: list[_Part] = [
            _Part(_ring(-half, r, r, max(t, self._thick(z, 0.08))), lab, TYRE, tyre),
            _Part(_ring(half, r, r, max(t, self._thick(z, 0.08))), lab, TYRE, tyre),
        ]
        if kind == "bicycle":
            parts += [
                _Part(_segment(-half, r, 0.0, r, t), lab, BODY, frame),
                _Part(_segment(0.0, r, -0.2 * facing, 0.95, t), lab, BODY, frame),
                _Part(_segment(-0.2 * facing, 0.95, 0.35 * facing, 0.95, t), lab, BODY, frame),
                _Part(_segment(0.0, r, 0.35 * facing, 0.95, t), lab, BODY, frame),
                _Part(_segment(0.35 * facing, 0.95, half * facing, r, t), lab, BODY, frame),
                _Part(_segment(0.35 * facing, 0.95, 0.45 * facing, 1.1, t), lab, BODY, frame),
            ]
            seat_v = 0.95
        else:
            parts += [
                _Part(_ellipse(0.0, 0.6, 0.65, 0.25), lab, BODY, frame),
                _Part(_segment(0.3 * facing, 0.6, 0.6 * facing, 1.05, t * 1.5), lab, BODY, tyre),
                _Part(_rect(-0.5, 0.2, 0.75, 0.9), lab, BODY, tyre),
            ]
            seat_v = 0.85
        top = 1.1
        if ridden:
            cloth, skin = self._pick(_CLOTH), self._col(SKIN, 0.1)
            rl = _ID["rider"]
            parts += [
                _Part(
                    _segment(-0.1 * facing, seat_v, 0.15 * facing, seat_v - 0.45, self._thick(z, 0.16)),
                    rl,
                    CLOTH,
                    cloth * 0.7,
                ),
                _Part(_trapezoid(-0.05 * facing, seat_v, seat_v + 0.65, 0.2, 0.16), rl, CLOTH, cloth),
                _Part(_segment(0.0, seat_v + 0.55, 0.4 * facing, seat_v + 0.2, self._thick(z, 0.1)), rl, SKIN, skin),
                _Part(_ellipse(0.0, seat_v + 0.8, 0.13, 0.15), rl, SKIN, skin),
            ]
            top = seat_v + 0.97
        return _with_extent(parts, -half - r - 0.1, half + r + 0.1, top)

    def _person(self, z: float) -> list[_Part]:
        rng = self.rng
        hgt = rng.uniform(1.55, 1.95)
        k = hgt / 1.75
        cloth, legs, skin = self._pick(_CLOTH), self._pick(_CLOTH) * 0.8, self._col(SKIN, 0.1)
        stride = rng.uniform(0.0, 0.25)
        lab = _ID["person"]
        tl = self._thick(z, 0.14 * k)
        parts = [
            _Part(_segment(0.0, 0.85 * k, -stride, 0.0, tl), lab, CLOTH, legs),
            _Part(_segment(0.0, 0.85 * k, stride, 0.0, tl), lab, CLOTH, legs),
            _Part(_trapezoid(0.0, 0.8 * k, 1.45 * k, 0.2 * k, 0.24 * k), lab, CLOTH, cloth),
            _Part(_segment(-0.24 * k, 1.4 * k, -0.28 * k, 0.85 * k, self._thick(z, 0.09)), lab, CLOTH, cloth),
            _Part(_segment(0.24 * k, 1.4 * k, 0.28 * k, 0.85 * k, self._thick(z, 0.09)), lab, CLOTH, cloth),
            _Part(_ellipse(0.0, 1.6 * k, 0.12 * k, 0.15 * k), lab, SKIN, skin),
        ]
        return _with_extent(parts, -0.45, 0.45, hgt + 0.05)

    def _pole_thing(self, z: float, kind: str) -> list[_Part]:
        rng = self.rng
        pw = self._thick(z, 0.2) / 2
        pole = self._col(POLE, 0.1)
        if kind == "pole":
            h = rng.uniform(4.0, 8.0)
            parts = [_Part(_rect(-pw, pw, 0.0, h), _ID["pole"], POLE, pole)]
            if rng.random() < 0.5:  # street lamp arm
                parts.append(_Part(_segment(0.0, h - 0.1, 1.2, h + 0.2, 2 * pw), _ID["pole"], POLE, pole))
            return _with_extent(parts, -pw - 0.1, 1.4, h + 0.4)
        if kind == "traffic light":
            h = rng.uniform(2.6, 3.4)
            box, lab = self._col(LIGHTBOX, 0.1), _ID["traffic light"]
            on = int(rng.integers(3))
            lamps = [np.array(cc, dtype=np.float32) for cc in ((0.9, 0.1, 0.1), (0.95, 0.75, 0.1), (0.1, 0.85, 0.3))]
            parts = [
                _Part(_rect(-pw, pw, 0.0, h), _ID["pole"], POLE, pole),
                _Part(_rect(-0.28, 0.28, h, h + 1.05), lab, LIGHTBOX, box),
            ]
            for i in range(3):
                c = lamps[i] if i == on else lamps[i] * 0.3
                parts.append(_Part(_ellipse(0.0, h + 0.85 - 0.32 * i, 0.13, 0.13), lab, LAMP, c))
            return _with_extent(parts, -0.4, 0.4, h + 1.1)
        h = rng.uniform(2.2, 2.8)
        shape = int(rng.integers(3))
        sc = self._col(SIGN, 0.1)
        lab = _ID["traffic sign"]
        r = 0.42
        if shape == 0:
            sign = _ellipse(0.0, h + r, r, r)
        elif shape == 1:
            sign = _trapezoid(0.0, h, h + 2 * r, r * 1.1, 0.0)
        else:
            sign = _rect(-r, r, h, h + 2 * r)
        inner = _ellipse(0.0, h + r, 0.6 * r, 0.6 * r) if shape == 0 else _rect(-0.3 * r, 0.3 * r, h + 0.4 * r, h + r)
        parts = [
            _Part(_rect(-pw, pw, 0.0, h), _ID["pole"], POLE, pole),
            _Part(sign, lab, SIGN, sc),
            _Part(_both(inner, sign), lab, SIGN, sc * 0.55),
        ]
        return _with_extent(parts, -r - 0.1, r + 0.1, h + 2 * r + 0.05)

    def _tree(self, z: float) -> list[_Part]:
        rng = self.rng
        h = rng.uniform(2.0, 3.5)
        ru, rv = rng.uniform(1.3, 2.3), rng.uniform(1.5, 2.6)
        lab = _ID["vegetation"]
        tw = self._thick(z, 0.3) / 2
        foliage = self._col(FOLIAGE, 0.12)
        parts = [
            _Part(_rect(-tw, tw, 0.0, h + rv * 0.5), lab, TRUNK, self._col(TRUNK, 0.1)),
            _Part(_blob(0.0, h + rv, ru, rv, rng), lab, FOLIAGE, foliage),
            _Part(_blob(0.25 * ru, h + 1.2 * rv, 0.45 * ru, 0.45 * rv, rng), lab, FOLIAGE, foliage * 1.15),
        ]
        return _with_extent(parts, -ru * 1.3, ru * 1.3, h + 2.3 * rv)

    def _ego_hood(self) -> None:
        """The recording car's bonnet at the bottom of the frame (Cityscapes' 'ego vehicle', ignored)."""
        c, rng = self.canvas, self.rng
        top = self.h * (1.0 - rng.uniform(0.06, 0.12))
        curve = (self.h - top) * 0.8 * ((self.xs[None, :] - self.w / 2) / (self.w * 0.6)) ** 2
        hood = self.ys[:, None] > top + curve
        c.label[hood] = _ID["ego vehicle"]
        c.mat[hood] = HOOD
        c.color[hood] = self._col(HOOD, 0.1)
        c.depth[hood] = 1.0
        c.shade[hood] = 1.0


class _PartList(list):  # a list of parts carrying its bounding box (u0, u1, v_top) in metres
    extent: tuple[float, float, float]


def _with_extent(parts: list[_Part], u0: float, u1: float, v1: float) -> list[_Part]:
    out = _PartList(parts)
    out.extent = (u0 - 0.05, u1 + 0.05, v1 + 0.05)
    return out


# ---- appearance ------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Bilinearly interpolated Gaussian noise on a grid of ``cell`` pixels: (h, w) float32, std ~0.6."""
    gh, gw = int(h / cell) + 2, int(w / cell) + 2
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    ys = np.arange(h, dtype=np.float32) / cell
    xs = np.arange(w, dtype=np.float32) / cell
    y0, x0 = ys.astype(np.int64), xs.astype(np.int64)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    a = grid[y0][:, x0]
    b = grid[y0][:, x0 + 1]
    c = grid[y0 + 1][:, x0]
    d = grid[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an (H, W, 3) float image (edge-replicated borders)."""
    if sigma < 0.3:
        return img
    r = max(1, int(np.ceil(2.5 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2).astype(np.float32)
    k /= k.sum()
    h, w = img.shape[:2]
    p = np.pad(img, ((r, r), (0, 0), (0, 0)), mode="edge")
    out = sum(k[i] * p[i : i + h] for i in range(2 * r + 1))
    p = np.pad(out, ((0, 0), (r, r), (0, 0)), mode="edge")
    return sum(k[i] * p[:, i : i + w] for i in range(2 * r + 1))


# Texture amplitude per material in the camera domain (multiplicative noise).
_TEX = np.zeros(NUM_MATERIALS, dtype=np.float32)
_TEX[[ROAD, SIDEWALK, TERRAIN, FACADE, FOLIAGE, WALL, BACKDROP]] = (0.25, 0.2, 0.35, 0.18, 0.45, 0.2, 0.15)
_TEX[[SKY, TRUNK, BODY, CLOTH, FENCE]] = (0.06, 0.2, 0.08, 0.12, 0.15)


def _texture_table(class_shift: float) -> np.ndarray:
    """Texture amplitude per material in the camera domain, with :data:`TEXTURE_SWAPS` by ``class_shift``."""
    if class_shift <= 0:
        return _TEX
    swapped = _TEX.copy()
    for m1, m2 in TEXTURE_SWAPS:
        swapped[[m1, m2]] = _TEX[[m2, m1]]
    return _lerp(_TEX, swapped, class_shift)


def _recolour_classes(canvas: _Canvas, class_shift: float) -> np.ndarray:
    """The canvas colours with :data:`CLASS_PERMUTATIONS` applied per class, by ``class_shift``."""
    img = canvas.color.copy()
    for name, perm in CLASS_PERMUTATIONS.items():
        mask = canvas.label == _ID[name]
        if mask.any():
            pixels = img[mask]
            img[mask] = _lerp(pixels, pixels[:, list(perm)], class_shift)
    return img


def render_canvas_rgb(
    canvas: _Canvas, rng: np.random.Generator, domain: str, shift: float, class_shift: float = 0.0
) -> np.ndarray:
    """Turn a geometry canvas into an (H, W, 3) uint8 image with the domain's look.

    Source domains (``gtav``, ``synthia``): flat shading, a crisp shadow-free world. Target
    (``cityscapes``): textures, cast shadows, exposure/white balance/gamma, haze, blur and sensor
    noise, each scaled by ``shift``; with ``class_shift`` > 0 also the per-class colour swaps
    (:data:`CLASS_PERMUTATIONS`) and texture swaps (:data:`TEXTURE_SWAPS`).
    """
    h, w = canvas.label.shape
    class_shift = float(class_shift) if domain == "cityscapes" else 0.0
    img = _recolour_classes(canvas, class_shift) if class_shift > 0 else canvas.color.copy()
    shade = np.abs(canvas.shade)
    t = float(max(shift, 0.0)) * SHIFT_UNIT if domain == "cityscapes" else 0.0
    if domain != "cityscapes":
        # Clean procedural detail: a faint regular stripe on foliage and terrain (game textures).
        stripes = (np.mod(np.arange(w), 6) < 3)[None, :] & np.isin(canvas.mat, (FOLIAGE, TERRAIN))
        img *= np.where(stripes, 0.93, 1.0)[..., None]
        return np.clip(img * shade[..., None] * 255.0 + 0.5, 0, 255).astype(np.uint8)
    tt = min(t, 1.0)
    # Texture: multi-scale multiplicative noise whose amplitude depends on the material.
    amp = _texture_table(class_shift)[canvas.mat] * t
    scale = w / 512.0
    noise = 0.6 * _smooth_noise(rng, h, w, 12 * scale) + 0.4 * _smooth_noise(rng, h, w, 2.5 * scale)
    img *= (1.0 + amp * noise)[..., None]
    # Cast shadows (marked negative by the geometry pass) and soft cloud shadows.
    shadow = canvas.shade < 0
    strength = rng.uniform(0.35, 0.6) * tt
    light = np.where(shadow, 1.0 - strength, shade)
    clouds = 1.0 + 0.15 * tt * _smooth_noise(rng, h, w, 80 * scale)
    img *= (light * np.where(canvas.mat == SKY, 1.0, clouds))[..., None]
    # Haze: distant things fade towards the sky colour.
    finite = np.isfinite(canvas.depth)
    dist = np.where(finite, canvas.depth, 0.0)
    a = (1.0 - np.exp(-dist / rng.uniform(60.0, 120.0))) * 0.6 * tt
    haze = _TGT[SKY] * rng.uniform(0.9, 1.05)
    img = img * (1 - a[..., None]) + haze * a[..., None]
    # Camera: exposure, white balance, gamma, saturation, vignetting, blur, noise.
    gain = np.exp(rng.normal(0.0, 0.25 * tt))
    wb = np.exp(rng.normal(0.0, 0.06 * tt, size=3)).astype(np.float32)
    img = img * gain * wb
    gray = img.mean(-1, keepdims=True)
    img = gray + (img - gray) * (1.0 - 0.35 * tt)
    gamma = np.exp(rng.normal(0.12 * tt, 0.1 * tt))
    img = np.clip(img, 0, 1) ** gamma
    ry = np.linspace(-1, 1, h, dtype=np.float32)[:, None] ** 2
    rx = np.linspace(-1, 1, w, dtype=np.float32)[None, :] ** 2
    img *= (1.0 - 0.125 * tt * (rx + ry))[..., None]
    img = _blur(img.astype(np.float32), rng.uniform(0.5, 1.0) * t * scale)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(0.03 * t)
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _synthia_lut() -> np.ndarray:
    """Cityscapes label id -> SYNTHIA raw id (0, void, for anything without a SYNTHIA class)."""
    by_target = {tgt: raw for _, raw, tgt in SYNTHIA_LABELS if tgt is not None}
    by_name = {name: raw for name, raw, _ in SYNTHIA_LABELS}
    lut = np.zeros(256, dtype=np.uint16)
    for row in CITYSCAPES_LABELS:
        raw = by_target.get(row.name, by_name.get(row.name))
        if raw is not None:
            lut[row.label_id] = raw
    return lut


_SYNTHIA_LUT = _synthia_lut()
_SYNTHIA_LANE = next(raw for name, raw, _ in SYNTHIA_LABELS if name == "lanemarking")


def render_scene(
    rng: np.random.Generator,
    size: tuple[int, int],
    domain: str,
    *,
    shift: float = 1.0,
    index: int = 0,
    class_shift: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one street scene in memory.

    Args:
        rng: the random generator that decides everything in the scene.
        size: (H, W) in pixels.
        domain: ``"gtav"``, ``"synthia"`` (source looks) or ``"cityscapes"`` (target look).
        shift: strength of the target's appearance and layout shift (0: the target is drawn
            like the GTA source; 1, the default: half-way to the full camera look, see ``SHIFT_UNIT``;
            2: the full camera palette and layout); ignored for source domains.
        index: image index; image ``index`` always contains the rare item ``index % 9`` of
            (train, bus, truck, motorcycle, bicycle, wall, fence, traffic light, traffic sign), so
            every split of 9 or more images has all classes.
        class_shift: strength (0 to 1) of the target's class-conditional shift: per-class colour swaps
            (:data:`CLASS_PERMUTATIONS`, :data:`MATERIAL_SWAPS`), texture swaps (:data:`TEXTURE_SWAPS`) and
            another class-frequency mix (:data:`CLASS_MIX`); 0, the default, draws the scenes of
            ``shift`` alone, unchanged; ignored for source domains.

    Returns:
        ``(rgb, labels)``: rgb uint8; labels uint8 Cityscapes label ids for ``gtav``/``cityscapes``
        or uint16 SYNTHIA ids for ``synthia`` (lane marks 22, as in SYNTHIA).

    Shape:
        rgb (H, W, 3), labels (H, W).
    """
    rgb, labels, _ = render_scene_instances(rng, size, domain, shift=shift, index=index, class_shift=class_shift)
    return rgb, labels


def render_scene_instances(
    rng: np.random.Generator,
    size: tuple[int, int],
    domain: str,
    *,
    shift: float = 1.0,
    index: int = 0,
    class_shift: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`render_scene` plus the instance ids (uint16, 0 for stuff, 1.. per drawn object).

    Shape:
        rgb (H, W, 3), labels (H, W), instances (H, W).
    """
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; valid: {', '.join(DOMAINS)}")
    h, w = int(size[0]), int(size[1])
    if h < 16 or w < 16:
        raise ValueError(f"size {size!r} is too small; use at least 16x16")
    if not 0.0 <= class_shift <= 1.0:
        raise ValueError(f"class_shift={class_shift} is outside [0, 1]; 0 = off (the default), 1 = full")
    scene = _Scene(rng, (h, w), domain, shift, index, class_shift)
    canvas = scene.build()
    rgb = render_canvas_rgb(canvas, rng, domain, shift, class_shift)
    labels: np.ndarray = canvas.label
    if domain == "synthia":
        labels = _SYNTHIA_LUT[canvas.label]
        labels[canvas.mat == LANE] = _SYNTHIA_LANE
    return rgb, labels, canvas.inst
