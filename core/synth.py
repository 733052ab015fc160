"""A georeferenced synthetic landscape on which both GLNet branches matter.

``synth`` writes four files into a folder:

``scene.tif``
    the image: ``bands`` bands (uint8, or uint16 on a reflectance-like scale
    up to about 10000), tiled 512 px, deflate, no nodata; band descriptions
    name the bands (red, green, blue, nir ...).
``labels.tif``
    uint8 class values on the same grid, nodata 255, a colour table and the
    ``GLNET_CLASSES`` tag (the project's mask format, see ``raster/masks.py``).
``labels.gpkg``
    the label polygons (layer ``labels``, fields ``class_id`` and
    ``class_name``) in the scene's CRS. They are labels.tif polygonized (GDAL
    polygonize straight from the file, so no block seams), every edge on a
    pixel edge: rasterising them with ``all_touched=False`` gives labels.tif
    back exactly.
``classes.json``
    the class list, ``[{"value", "name", "color"}, ...]``.

The landscape is built for GLNet's geometry (the ``fast`` preset: a 1880 px
context window seen by the global branch at 512 px, 3.7x downsampled; 512 px
local patches at full resolution):

* **agriculture** and **barren** are painted with the *same* spectra and the
  same noise fields, so their local texture statistics are identical. They
  differ only in layout: agriculture is large axis-aligned rectangles,
  barren large irregular rounded blobs drawn from the same distribution of
  areas and aspect ratios (sides about 0.55-1.55 x ``feature_size``, 900 px by
  default). A 512 px patch inside one cannot tell which it is; the
  downsampled window shows the shape. Only the global branch can separate
  them.
* **roads** are a network of lines 2, 3 or 4 px wide (perpendicular width):
  dusty tracks that brighten whatever they cross by 15-35 DN, about two
  standard deviations of the local texture. Downsampled 3.7x they become
  sub-pixel smears at about the texture's level, and the global branch's
  output (stride 4 of its input, about 15 scene pixels per cell) cannot hold
  them anyway: only the local branch can draw them.
* **grassland** (the background), **forest** (lobed blobs, coarse canopy
  texture, high near-infrared) and **water** (a meandering river and lakes,
  smooth and dark, near-infrared close to 0) are easy for both branches.

The image is per-class spectra modulated by shared noise fields with
per-class amplitudes (smoothed pixel noise of about 3 px, value noise with
cells of 12, 40 and 250 px), blurred by a small point-spread function (soft
class boundaries), times a white grain, plus sensor noise and per-band haze
offsets. Everything is streamed in blocks of 512 rows x 4096 columns: the
layout is vector geometry (in pixel coordinates) rasterised per block, the
noise fields are pure functions of the pixel position (hashes of lattice
coordinates), and grain and sensor noise come from a generator seeded by the
block's position in a fixed grid. The output depends on the seed only, and no
whole-scene array is ever made.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import GlnetError
from .files import atomic_output, check_output_path, full_disk_as_error
from .modelfile import ClassInfo
from .raster.masks import CLASSES_TAG, MASK_DESCRIPTION, NODATA, classes_json, colormap

CLASSES: tuple[ClassInfo, ...] = (
    ClassInfo(0, "grassland", (163, 204, 122)),
    ClassInfo(1, "agriculture", (255, 214, 0)),
    ClassInfo(2, "barren", (186, 140, 99)),
    ClassInfo(3, "forest", (24, 112, 48)),
    ClassInfo(4, "water", (40, 120, 230)),
    ClassInfo(5, "road", (220, 30, 40)),
)
GRASSLAND, AGRICULTURE, BARREN, FOREST, WATER, ROAD = range(6)
OUTPUTS = ("scene.tif", "labels.tif", "labels.gpkg", "classes.json")
LAYER = "labels"
MIN_SIZE = 256
MAX_SIZE = 200_000

# Processing blocks: a fixed grid (sensor noise is seeded per block, so the
# grid is part of the definition of the image). Rows match the 512 px tiles.
BLOCK_ROWS = 512
BLOCK_COLS = 4096
TILE = 512
HALO = 2

# Base spectra in uint8 digital numbers, bands blue, green, red, nir, swir1,
# swir2. Agriculture and barren are the same soil on purpose. Row 5 is the
# surface of a bridge (a road over water).
_SOIL = (104.0, 130.0, 150.0, 160.0, 180.0, 150.0)
_SPECTRA = np.array([
    (62.0, 98.0, 72.0, 150.0, 118.0, 70.0),     # grassland
    _SOIL,                                        # agriculture
    _SOIL,                                        # barren
    (40.0, 66.0, 46.0, 172.0, 92.0, 45.0),       # forest
    (70.0, 72.0, 48.0, 16.0, 8.0, 6.0),          # water
    (118.0, 124.0, 132.0, 140.0, 158.0, 140.0),  # road over water (bridge)
], dtype=np.float32)
# Roads are dusty tracks: the surface they cross, brightened. Their contrast
# (about 15-35 DN) is clear to a 512 px patch but sinks into the texture once
# a 2-4 px line is averaged over 3.7 px.
ROAD_GAIN, ROAD_LIFT = 0.85, 38.0
# Relative brightness modulation per class: the first column scales white
# noise (grain, after the PSF), the second smoothed pixel noise (crowns,
# clods: about 3 px), the others three shared value-noise fields (unit std)
# with cells of `_NOISE_CELLS` px. Agriculture and barren identical.
_NOISE_CELLS = (12.0, 40.0, 250.0)
_SOIL_TEXTURE = (0.05, 0.04, 0.10, 0.07, 0.05)
_TEXTURE = np.array([
    (0.03, 0.04, 0.12, 0.06, 0.05),    # grassland
    _SOIL_TEXTURE,                     # agriculture
    _SOIL_TEXTURE,                     # barren
    (0.06, 0.14, 0.18, 0.06, 0.04),    # forest
    (0.005, 0.01, 0.02, 0.04, 0.06),   # water
    (0.02, 0.02, 0.02, 0.02, 0.03),    # road
], dtype=np.float32)
# Value noise of a uniform [-1, 1] lattice with smoothstep interpolation has
# a standard deviation of 0.4289 (computed); this makes it unit.
_VALUE_NOISE_SCALE = np.float32(1.0 / 0.4289)
SENSOR_NOISE = 2.0
# Output bands for each band count, and each band's offset in uint8 DN (haze
# brightens the short wavelengths). "pan" is a weighted mean of base bands.
_BASE = ("blue", "green", "red", "nir", "swir1", "swir2")
_OFFSETS = {"blue": 10.0, "green": 5.0, "red": 2.0, "nir": 0.0, "swir1": 0.0, "swir2": 0.0,
            "pan": 4.0}
_BAND_SETS = {
    1: ("pan",),
    2: ("red", "nir"),
    3: ("red", "green", "blue"),
    4: ("red", "green", "blue", "nir"),
    5: ("red", "green", "blue", "nir", "swir1"),
    6: ("red", "green", "blue", "nir", "swir1", "swir2"),
}
_PAN = {"blue": 0.2, "green": 0.3, "red": 0.3, "nir": 0.2}
UINT16_SCALE = 40.0
DTYPES = ("uint8", "uint16")
# Where a scene in a CRS other than UTM is centred: near Vienna.
_DEFAULT_LONLAT = (16.37, 48.21)
_PAINT_ORDER = (FOREST, AGRICULTURE, BARREN, WATER, ROAD)


@dataclass
class Feature:
    """One shape of the layout: its class, kind and geometry in pixel coordinates.

    Pixel coordinates: x = column, y = row, pixel (r, c) covers
    ``[c, c + 1] x [r, r + 1]``.
    """

    value: int
    kind: str
    geometry: object  # shapely geometry


@dataclass
class Layout:
    """The landscape as vector geometry, painted in list order over grassland."""

    width: int
    height: int
    feature_size: float
    features: list[Feature] = field(default_factory=list)

    def of_class(self, value: int) -> list[Feature]:
        return [f for f in self.features if f.value == value]

    def rasterize(self, row0: int, col0: int, height: int, width: int,
                  roads: bool = True) -> np.ndarray:
        """Class values of a window (rows and columns may extend past the scene).

        ``roads=False`` gives the surface under the roads.
        """
        import shapely
        from rasterio import features
        from rasterio.transform import Affine

        x0, y0, x1, y1 = col0, row0, col0 + width, row0 + height
        shapes = []
        for f in self.features:
            if not roads and f.value == ROAD:
                continue
            minx, miny, maxx, maxy = f.geometry.bounds
            if maxx <= x0 or minx >= x1 or maxy <= y0 or miny >= y1:
                continue
            # Clipping to the window (plus a margin) keeps GDAL's scanline fill
            # from walking all of a long road's edges for every row.
            g = shapely.clip_by_rect(f.geometry, x0 - 2, y0 - 2, x1 + 2, y1 + 2)
            if not g.is_empty:
                shapes.append((g, f.value))
        if not shapes:
            return np.full((height, width), GRASSLAND, dtype=np.uint8)
        return features.rasterize(shapes, out_shape=(height, width),
                                  transform=Affine(1, 0, col0, 0, 1, row0),
                                  fill=GRASSLAND, dtype="uint8")


def default_feature_size(width: int, height: int) -> float:
    """Typical side of a parcel in pixels: 900, less for scenes under 4050 px."""
    return float(min(900.0, max(96.0, min(width, height) / 4.5)))


# --------------------------------------------------------------------------- layout


def make_layout(width: int, height: int, seed: int = 0,
                feature_size: float | None = None) -> Layout:
    """The vector layout of a landscape (pixel coordinates), deterministic for a seed.

    Water (a river and lakes) and forest are placed first, then agriculture
    parcels and barren blobs alternately where they keep a gap to everything
    already placed, until each class has its share of the area; roads are
    drawn over everything.
    """
    import shapely
    from shapely.geometry import LineString, box

    f = float(feature_size) if feature_size else default_feature_size(width, height)
    rng = np.random.default_rng([int(seed), 0x5EED])
    spacing = max(0.7 * f, 200.0)
    layout = Layout(width, height, f)
    scene = box(0, 0, width, height)
    area = float(width * height)
    obstacles: list = []
    gap = max(0.06 * f, 8.0)

    def covered(value: int) -> float:
        return sum(scene.intersection(ft.geometry).area for ft in layout.of_class(value)) / area

    def free(geom) -> bool:
        if not obstacles:
            return True
        return not bool(np.any(shapely.intersects(np.array(obstacles, dtype=object), geom)))

    def add(value: int, kind: str, geom) -> None:
        layout.features.append(Feature(value, kind, geom))
        obstacles.append(geom.buffer(gap, quad_segs=4))

    def centre(margin: float) -> tuple[float, float]:
        return (rng.uniform(-margin, width + margin), rng.uniform(-margin, height + margin))

    # Water: a meandering river across the scene, then lakes.
    if min(width, height) >= 2 * f or rng.random() < 0.5:
        river_width = rng.uniform(0.06, 0.10) * f
        length = width if rng.random() < 0.5 else height
        across = height if length == width else width
        t = np.arange(-0.1 * length, 1.1 * length + 20, 20.0)
        y = (rng.uniform(0.25, 0.75) * across + rng.uniform(-0.15, 0.15) * t
             + sum(rng.uniform(0.02, 0.08) * across / k
                   * np.sin(2 * np.pi * t / (rng.uniform(0.6, 1.4) * length / k) + rng.uniform(0, 2 * np.pi))
                   for k in (1, 2, 4)))
        pts = np.column_stack([t, y] if length == width else [y, t])
        add(WATER, "river", LineString(pts).buffer(river_width / 2, quad_segs=8))
    for _ in range(max(1, round(area / (3.2 * f) ** 2))):
        for _attempt in range(50):
            geom = _blob(rng, *centre(0.0), radius=rng.uniform(0.2, 0.45) * f,
                         harmonics=4, roughness=0.25, aspect=rng.uniform(1.0, 1.6))
            if free(geom):
                add(WATER, "lake", geom)
                break

    # Forest: lobed blobs.
    for _attempt in range(400):
        if covered(FOREST) >= 0.15:
            break
        geom = _blob(rng, *centre(0.3 * f), radius=rng.uniform(0.35, 0.9) * f,
                     harmonics=12, roughness=0.6, aspect=rng.uniform(1.0, 1.8))
        if free(geom):
            add(FOREST, "forest", geom)

    # Agriculture and barren: same areas and aspect ratios, different shapes.
    targets = {AGRICULTURE: 0.20, BARREN: 0.15}
    shares = dict.fromkeys(targets, 0.0)
    scale = 1.0
    failures = 0
    for _attempt in range(3000):
        pending = [v for v in targets if shares[v] < targets[v]]
        if not pending:
            break
        value = min(pending, key=lambda v: shares[v] / targets[v])
        a, b = rng.uniform(0.55, 1.55, size=2) * f * scale
        if max(a, b) / min(a, b) > 2.2:
            continue
        cx, cy = centre(0.25 * f)
        if value == AGRICULTURE:
            geom = box(cx - a / 2, cy - b / 2, cx + a / 2, cy + b / 2)
        else:
            geom = _blob(rng, cx, cy, radius=math.sqrt(a * b / math.pi), harmonics=6,
                         roughness=0.35, aspect=max(a, b) / min(a, b))
        if free(geom):
            add(value, "parcel" if value == AGRICULTURE else "blob", geom)
            shares[value] += scene.intersection(geom).area / area
            failures = 0
        else:
            failures += 1
            if failures >= 100 and scale > 0.8:
                scale *= 0.9
                failures = 0

    # Roads: two families of gently curving lines at about `spacing`, some of
    # them dead ends, and a few diagonals.
    for horizontal in (True, False):
        across, along = (height, width) if horizontal else (width, height)
        pos = rng.uniform(0.1, 0.9) * spacing
        while pos < across:
            road = _road(rng, pos, along, spacing, partial=rng.random() < 0.3)
            if not horizontal:
                road = road[:, ::-1]
            _add_road(layout, rng, road)
            pos += spacing * rng.uniform(0.75, 1.25)
    for _ in range(max(1, round(area / (3 * spacing) ** 2 * 0.15))):
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        angle = rng.uniform(0, np.pi)
        diag = math.hypot(width, height)
        t = np.arange(-diag, diag + 25, 25.0)
        wiggle = rng.uniform(0.02, 0.06) * spacing * np.sin(2 * np.pi * t / (rng.uniform(2, 5) * spacing)
                                                            + rng.uniform(0, 2 * np.pi))
        pts = np.column_stack([x0 + t * np.cos(angle) - wiggle * np.sin(angle),
                               y0 + t * np.sin(angle) + wiggle * np.cos(angle)])
        _add_road(layout, rng, pts)

    layout.features.sort(key=lambda ft: _PAINT_ORDER.index(ft.value))
    return layout


def _blob(rng: np.random.Generator, cx: float, cy: float, radius: float, harmonics: int,
          roughness: float, aspect: float):
    """A star-shaped blob: a circle with random low harmonics, stretched and rotated."""
    from shapely.geometry import Polygon

    n = int(np.clip(2 * np.pi * radius * math.sqrt(aspect) / 6, 48, 720))
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.ones(n)
    for k in range(2, harmonics + 1):
        r += roughness * rng.uniform(0.2, 1.0) / k * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    r = np.maximum(r, 0.3)
    # Keep the area close to pi * radius^2 whatever the harmonics did.
    r *= 1.0 / math.sqrt(np.mean(r ** 2))
    s = math.sqrt(aspect)
    x, y = r * np.cos(theta) * radius * s, r * np.sin(theta) * radius / s
    phi = rng.uniform(0, np.pi)
    c, sn = math.cos(phi), math.sin(phi)
    return Polygon(np.column_stack([cx + c * x - sn * y, cy + sn * x + c * y]))


def _road(rng: np.random.Generator, pos: float, along: float, spacing: float,
          partial: bool) -> np.ndarray:
    """Points (along, across) of one road of a family."""
    t = np.arange(-0.05 * along, 1.05 * along + 25, 25.0)
    if partial:
        a = rng.uniform(-0.05, 0.6) * along
        b = a + rng.uniform(0.3, 0.7) * along
        t = t[(t >= a) & (t <= b)]
    slope = rng.uniform(-0.12, 0.12)
    y = pos + slope * (t - along / 2)
    for k in (1, 3):
        y = y + rng.uniform(0.02, 0.12) / k * spacing * np.sin(
            2 * np.pi * t / (rng.uniform(1.5, 4.0) * spacing / k) + rng.uniform(0, 2 * np.pi))
    return np.column_stack([t, y])


def _add_road(layout: Layout, rng: np.random.Generator, pts: np.ndarray) -> None:
    """A road 2, 3 or 4 px wide along ``pts``; it bridges rivers but stops at lakes."""
    from shapely.geometry import LineString

    if len(pts) < 2:
        return
    width = float(rng.choice([2, 3, 4], p=[0.3, 0.4, 0.3]))
    geom = LineString(pts).buffer(width / 2, quad_segs=4, cap_style="flat", join_style="round")
    for lake in (f.geometry for f in layout.features if f.kind == "lake"):
        if geom.intersects(lake):
            geom = geom.difference(lake)
    if not geom.is_empty:
        layout.features.append(Feature(ROAD, f"road {width:g} px", geom))


# --------------------------------------------------------------------------- image


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, elementwise on uint64 (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _lattice(key: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Uniform [-1, 1) values at integer lattice points, a pure function of (key, row, col)."""
    bias = np.int64(1 << 30)
    r = (rows.astype(np.int64) + bias).astype(np.uint64)
    c = (cols.astype(np.int64) + bias).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = _mix64(_mix64(r[:, None] + np.uint64(key)) + c[None, :])
    return ((h >> np.uint64(40)).astype(np.float32) * np.float32(2.0 / (1 << 24)) - 1).astype(np.float32)


def value_noise(seed: int, stream: int, cell: float, row0: int, col0: int,
                height: int, width: int) -> np.ndarray:
    """Smooth unit-variance noise of feature size ``cell`` px on a window of the plane.

    Value noise: uniform random values on a lattice of spacing ``cell`` (with
    a random phase per stream), interpolated with smoothstep weights. The
    value at a pixel depends only on (seed, stream, cell, pixel position), so
    windows of any size and position tile without seams.
    """
    key = int(_mix64(np.array([(int(seed) & 0xFFFFFFFF) << 16 | (stream & 0xFFFF)],
                              dtype=np.uint64))[0])
    phase = ((key >> 8) & 0xFFFF) / 65536.0, ((key >> 24) & 0xFFFF) / 65536.0

    def axis(start: int, n: int, ph: float):
        u = (np.arange(start, start + n, dtype=np.float64) + 0.5) / cell + ph
        i = np.floor(u).astype(np.int64)
        t = (u - i).astype(np.float32)
        return i, t * t * (3 - 2 * t)

    ri, rs = axis(row0, height, phase[0])
    ci, cs = axis(col0, width, phase[1])
    r_lo, c_lo = int(ri[0]), int(ci[0])
    lat = _lattice(key, np.arange(r_lo, int(ri[-1]) + 2), np.arange(c_lo, int(ci[-1]) + 2))
    cj = ci - c_lo
    along = lat[:, cj] * (1 - cs) + lat[:, cj + 1] * cs
    rj = ri - r_lo
    out = along[rj] * (1 - rs)[:, None]
    out += along[rj + 1] * rs[:, None]
    out *= _VALUE_NOISE_SCALE
    return out


# Binomial kernel (sigma 1.41 px) of the fine noise, and the factor that makes
# smoothed uniform [-1, 1] noise unit-variance.
_FINE_KERNEL = np.array([1, 8, 28, 56, 70, 56, 28, 8, 1], dtype=np.float32) / 256
_FINE_SCALE = np.float32(1.0 / (math.sqrt(1 / 3) * float(np.sum(_FINE_KERNEL.astype(np.float64) ** 2))))


def fine_noise(seed: int, stream: int, row0: int, col0: int, height: int, width: int) -> np.ndarray:
    """Isotropic unit-variance noise of about 3 px on a window of the plane.

    Uniform values hashed from each pixel's position (a pure function of
    seed, stream and position, so windows tile without seams), smoothed by a
    9-tap binomial kernel.
    """
    key = int(_mix64(np.array([(int(seed) & 0xFFFFFFFF) << 16 | (0x8000 | stream & 0x7FFF)],
                              dtype=np.uint64))[0])
    r = len(_FINE_KERNEL) // 2
    raw = _lattice(key, np.arange(row0 - r, row0 + height + r), np.arange(col0 - r, col0 + width + r))
    rows = sum(k * raw[i: i + height] for i, k in enumerate(_FINE_KERNEL))
    out = sum(k * rows[:, i: i + width] for i, k in enumerate(_FINE_KERNEL))
    out *= _FINE_SCALE
    return out


def band_names(bands: int) -> tuple[str, ...]:
    """Names of the scene's bands for a band count (1 to 6)."""
    try:
        return _BAND_SETS[bands]
    except KeyError:
        raise GlnetError(f"--bands must be 1 to 6, got {bands}") from None


def _band_spectra(names: Sequence[str]) -> np.ndarray:
    """(12, bands) base values of the output bands: rows 0-5 the classes' own
    surfaces, rows 6-11 a road over each class (``6 + class``)."""
    over = _SPECTRA * ROAD_GAIN + ROAD_LIFT
    over[WATER] = _SPECTRA[ROAD]  # bridges
    # Row ROAD of the first half is never looked up: road pixels use 6 + under.
    table = np.concatenate([_SPECTRA, over])
    cols = []
    for name in names:
        if name == "pan":
            cols.append(sum(w * table[:, _BASE.index(b)] for b, w in _PAN.items()))
        else:
            cols.append(table[:, _BASE.index(name)])
    return np.stack(cols, axis=1).astype(np.float32)


def _blur(a: np.ndarray) -> np.ndarray:
    """The point-spread function: a separable [1, 2, 1] / 4 kernel, valid part (shrinks by 1 px per side)."""
    v = a[:-2] + 2 * a[1:-1] + a[2:]
    return (v[:, :-2] + 2 * v[:, 1:-1] + v[:, 2:]) * np.float32(1 / 16)


def render_block(layout: Layout, seed: int, names: Sequence[str], row0: int, col0: int,
                 height: int, width: int, dtype: str = "uint8") -> tuple[np.ndarray, np.ndarray]:
    """Image ``(bands, height, width)`` and labels ``(height, width)`` of one block.

    The block must be one of the fixed grid's (``BLOCK_ROWS`` x ``BLOCK_COLS``,
    clipped at the scene's edge): its sensor noise is seeded by its position.
    """
    h, w = height + 2 * HALO, width + 2 * HALO
    lab = layout.rasterize(row0 - HALO, col0 - HALO, h, w)
    # Surface index: the class, or 6 + the class under a road.
    road = lab == ROAD
    surface = lab.copy()
    if road.any():
        under = layout.rasterize(row0 - HALO, col0 - HALO, h, w, roads=False)
        surface[road] = 6 + under[road]

    def per_surface(column: int) -> np.ndarray:
        amp = np.zeros(256, dtype=np.float32)
        amp[: len(_TEXTURE)] = _TEXTURE[:, column]
        amp[6: 6 + len(_TEXTURE)] = _TEXTURE[ROAD, column]
        return amp

    m = np.take(per_surface(1), surface) * fine_noise(seed, 1, row0 - HALO, col0 - HALO, h, w)
    m += 1.0
    for k, cell in enumerate(_NOISE_CELLS):
        m += np.take(per_surface(k + 2), surface) * value_noise(
            seed, k + 2, cell, row0 - HALO, col0 - HALO, h, w)
    spectra = _band_spectra(names)
    gen = np.random.default_rng([int(seed), 0xB10C, row0 // BLOCK_ROWS, col0 // BLOCK_COLS])
    # The PSF needs one pixel beyond the block; HALO is 2, so crop one more.
    c = HALO - 1
    inner = surface[HALO: HALO + height, HALO: HALO + width]
    grain = gen.standard_normal((height, width), dtype=np.float32)
    grain *= np.take(per_surface(0), inner)
    grain += 1.0
    scale = UINT16_SCALE if dtype == "uint16" else 1.0
    top = 65535.0 if dtype == "uint16" else 255.0
    out = np.empty((len(names), height, width), dtype=dtype)
    lut = np.zeros(256, dtype=np.float32)
    for b, name in enumerate(names):
        lut[: len(spectra)] = spectra[:, b]
        v = np.take(lut, surface)
        v *= m
        v = _blur(v)[c: c + height, c: c + width]
        v *= grain
        v += gen.standard_normal((height, width), dtype=np.float32) * np.float32(SENSOR_NOISE)
        v += np.float32(_OFFSETS[name])
        if scale != 1.0:
            v *= np.float32(scale)
        np.clip(v, 0, top, out=v)
        np.rint(v, out=v)
        out[b] = v
    return out, lab[HALO: HALO + height, HALO: HALO + width]


# --------------------------------------------------------------------------- georeferencing


def scene_grid(width: int, height: int, crs: str = "EPSG:32633", resolution: float = 0.5):
    """CRS and affine transform of a synthetic scene.

    ``resolution`` is in metres: converted to the CRS's linear unit for
    projected CRSs, and to degrees at the scene's latitude for geographic ones
    (pixels square on the ground). The scene is centred on a plausible place:
    the central meridian of a UTM zone at 48 degrees north (south zones: 30
    south), otherwise near Vienna; the origin is rounded to whole units.
    """
    from rasterio.crs import CRS
    from rasterio.errors import CRSError
    from rasterio.transform import Affine
    from rasterio.warp import transform as warp_transform

    try:
        crs_obj = CRS.from_user_input(crs)
    except CRSError as exc:
        raise GlnetError(f"--crs {crs!r} is not a CRS GDAL knows ({exc})") from None
    if not resolution or resolution <= 0 or not math.isfinite(resolution):
        raise GlnetError(f"--resolution must be a positive number of metres, got {resolution}")
    lon, lat = _DEFAULT_LONLAT
    epsg = crs_obj.to_epsg()
    if epsg and (32601 <= epsg <= 32660 or 32701 <= epsg <= 32760):
        lon = -183.0 + 6.0 * (epsg % 100)
        lat = 48.0 if epsg < 32700 else -30.0
    if crs_obj.is_geographic:
        rx = resolution / (111_320.0 * math.cos(math.radians(lat)))
        ry = resolution / 110_574.0
        x0 = round(lon - width * rx / 2, 4)
        y0 = round(lat + height * ry / 2, 4)
        return crs_obj, Affine(rx, 0.0, x0, 0.0, -ry, y0)
    factor = crs_obj.linear_units_factor[1] if crs_obj.linear_units_factor else 1.0
    res = resolution / factor
    try:
        xs, ys = warp_transform("EPSG:4326", crs_obj, [lon], [lat])
        cx, cy = float(xs[0]), float(ys[0])
        if not (math.isfinite(cx) and math.isfinite(cy)):
            raise ValueError
    except Exception:
        cx, cy = 0.0, 0.0
    x0 = float(round(cx - width * res / 2))
    y0 = float(round(cy + height * res / 2))
    return crs_obj, Affine(res, 0.0, x0, 0.0, -res, y0)


# --------------------------------------------------------------------------- files


@dataclass
class SynthResult:
    """Paths written and a summary of the landscape."""

    scene: Path
    labels: Path
    polygons: Path
    classes: Path
    width: int
    height: int
    bands: tuple[str, ...]
    class_fractions: dict[str, float]
    polygon_count: int


def synth(out_dir: str | Path, size: int | tuple[int, int] = 4096, bands: int = 3,
          seed: int = 0, crs: str = "EPSG:32633", resolution: float = 0.5,
          dtype: str = "uint8", feature_size: float | None = None, overwrite: bool = False,
          progress: Callable[..., None] | None = None) -> SynthResult:
    """Write a synthetic landscape (scene.tif, labels.tif, labels.gpkg, classes.json) to ``out_dir``.

    ``size`` is the side in pixels (or ``(width, height)``); ``feature_size``
    the typical side of a parcel in pixels (default 900, less for scenes under
    4050 px). ``progress(fraction, message=None)`` is called as blocks are
    done (the project's progress convention, see ``progress.py``). Existing
    outputs are refused unless ``overwrite``; a failed run leaves none of them.
    """
    width, height = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    for v in (width, height):
        if not MIN_SIZE <= v <= MAX_SIZE:
            raise GlnetError(f"--size must be {MIN_SIZE} to {MAX_SIZE} pixels, got {v}")
    if dtype not in DTYPES:
        raise GlnetError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if feature_size is not None and not 32 <= feature_size <= 0.9 * min(width, height):
        raise GlnetError(f"feature size must be 32 px to 0.9 x the scene's side, got {feature_size}")
    names = band_names(bands)
    crs_obj, transform = scene_grid(width, height, crs, resolution)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise GlnetError(f"{out_dir}: exists and is not a folder")
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _synth(out_dir, overwrite, width, height, names, crs_obj, transform, seed,
                      feature_size, dtype, progress)
    except BaseException:
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()  # a failed run leaves no empty folder either
        raise


def _synth(out_dir, overwrite, width, height, names, crs_obj, transform, seed,
           feature_size, dtype, progress) -> SynthResult:
    import rasterio

    paths = [check_output_path(out_dir / name, overwrite) for name in OUTPUTS]

    layout = make_layout(width, height, seed, feature_size)
    classes_tag = classes_json(CLASSES)
    counts = np.zeros(256, dtype=np.int64)
    blocks = [(r, c) for r in range(0, height, BLOCK_ROWS) for c in range(0, width, BLOCK_COLS)]
    tags = {"GLNET_SYNTH": json.dumps({"seed": seed, "width": width, "height": height,
                                       "feature_size": layout.feature_size, "dtype": dtype})}
    common = dict(driver="GTiff", width=width, height=height, crs=crs_obj, transform=transform,
                  tiled=True, blockxsize=TILE, blockysize=TILE, compress="deflate",
                  bigtiff="IF_SAFER", num_threads="ALL_CPUS")
    with ExitStack() as stack:
        tmp = [stack.enter_context(atomic_output(p, overwrite)) for p in paths]
        stack.enter_context(full_disk_as_error(out_dir))  # names the folder, not one file
        with rasterio.open(tmp[0], "w", count=len(names), dtype=dtype, predictor=2, zlevel=1,
                           photometric="RGB" if names[:3] == ("red", "green", "blue")
                           else "MINISBLACK", **common) as img, \
             rasterio.open(tmp[1], "w", count=1, dtype="uint8", nodata=NODATA, zlevel=6,
                           **common) as lab:
            for b, name in enumerate(names, start=1):
                img.set_band_description(b, name)
            img.update_tags(**tags)
            lab.set_band_description(1, MASK_DESCRIPTION)
            lab.update_tags(**{CLASSES_TAG: classes_tag})
            lab.write_colormap(1, colormap(CLASSES))
            for i, (r, c) in enumerate(blocks):
                h, w = min(BLOCK_ROWS, height - r), min(BLOCK_COLS, width - c)
                image, labels = render_block(layout, seed, names, r, c, h, w, dtype)
                window = rasterio.windows.Window(c, r, w, h)
                img.write(image, window=window)
                lab.write(labels, 1, window=window)
                counts += np.bincount(labels.ravel(), minlength=256)
                if progress is not None:
                    progress(0.9 * (i + 1) / len(blocks))
        if progress is not None:
            progress(0.9, "polygonizing the labels")
        n_polygons = _write_polygons(tmp[1], tmp[2], crs_obj)
        tmp[3].write_text(json.dumps(json.loads(classes_tag), indent=2) + "\n")
        if progress is not None:
            progress(1.0)
    total = float(width * height)
    return SynthResult(*paths, width=width, height=height, bands=names,
                       class_fractions={c.name: counts[c.value] / total for c in CLASSES},
                       polygon_count=n_polygons)


def _write_polygons(labels_path: Path, gpkg_path: Path, crs) -> int:
    """Polygonize a label raster into a GeoPackage layer; returns the polygon count.

    GDAL polygonizes straight from the file's band, row by row, so polygons
    never break at block seams and memory follows the polygons, not the raster.
    """
    import fiona
    import rasterio
    from rasterio import features

    names = {c.value: c.name for c in CLASSES}
    schema = {"geometry": "Polygon", "properties": {"class_id": "int", "class_name": "str"}}
    gpkg_path.unlink(missing_ok=True)  # the empty placeholder; GDAL creates the file
    n = 0
    with rasterio.open(labels_path) as ds, \
         fiona.open(gpkg_path, "w", driver="GPKG", layer=LAYER, schema=schema,
                    crs_wkt=crs.to_wkt()) as out:
        batch = []
        for geom, value in features.shapes(rasterio.band(ds, 1), connectivity=4):
            v = int(value)
            batch.append({"geometry": geom, "properties": {"class_id": v, "class_name": names.get(v, str(v))}})
            if len(batch) >= 2000:
                out.writerecords(batch)
                n += len(batch)
                batch = []
        out.writerecords(batch)
        n += len(batch)
    return n
