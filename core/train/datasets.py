"""Training scenes and the windows sampled from them.

A ``TrainingScene`` pairs an image raster with a label source (see
``labels``) and reads ``(image, labels, valid)`` for any window, never the
whole scene. Scenes come from image/label pairs (rasters or vectors) or from
dataset folders (DeepGlobe, LoveDA, Dubai). ``split_regions`` divides each scene into
spatially disjoint training and validation rectangles; ``WindowSampler``
draws training windows inside the training rectangles, skipping nodata and
optionally favouring rare classes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import GlnetError
from ..modelfile import ClassInfo
from ..raster.aoi import AoiWording, AreaOfInterest, read_aoi
from ..raster.ground import ground_pixel_size, window_transform
from ..raster.labels import (
    IGNORE,
    ColorLabels,
    RasterLabels,
    VectorLabels,
    _open_raster,
    check_class_values,
)

VECTOR_SUFFIXES = {".gpkg", ".shp", ".geojson", ".json", ".fgb", ".kml", ".gml", ".sqlite"}

LOVEDA_CLASSES = (
    ("background", (255, 255, 255)), ("building", (255, 0, 0)), ("road", (255, 255, 0)),
    ("water", (0, 0, 255)), ("barren", (159, 129, 183)), ("forest", (0, 255, 0)),
    ("agriculture", (255, 195, 128)),
)

# Dubai aerial imagery (Humans in the Loop / MBRSC): the mask colours of its six classes.
DUBAI_CLASSES = (
    ("building", (60, 16, 152)), ("land", (132, 41, 246)), ("road", (110, 193, 228)),
    ("vegetation", (254, 221, 58)), ("water", (226, 169, 41)), ("unlabeled", (155, 155, 155)),
)

# Training's words for an unreadable or empty area of interest (segment has its own).
AOI_WORDING = AoiWording(not_found=None, unreadable="{path}: not a vector file fiona can read ({exc})",
                         empty="{path}: area of interest has no polygons")


@dataclass(frozen=True)
class Rect:
    """A rectangle of pixels of scene ``scene``."""

    scene: int
    row: int
    col: int
    height: int
    width: int

    def window(self):
        from rasterio.windows import Window

        return Window(self.col, self.row, self.width, self.height)


class TrainingScene:
    """An image raster with labels on its grid."""

    def __init__(self, image: str | Path, labels, aoi: str | Path | None = None,
                 bands: Sequence[int] | None = None, name: str | None = None) -> None:
        self.path = Path(image)
        self._name = name
        self.ds = _open_raster(self.path)
        self.labels = labels(self.ds) if callable(labels) else labels
        self.aoi = AreaOfInterest(read_aoi(aoi, self.ds.crs, wording=AOI_WORDING)) if aoi else None
        self.bands = tuple(bands) if bands else tuple(range(1, self.ds.count + 1))
        if max(self.bands) > self.ds.count or min(self.bands) < 1:
            raise GlnetError(f"{self.path}: has {self.ds.count} bands, cannot use bands {list(self.bands)}")

    @property
    def name(self) -> str:
        """The name given (a Dubai scene's ``tile_N/image_part_00K``), else the image's file name."""
        return self._name or self.path.name

    @property
    def height(self) -> int:
        return self.ds.height

    @property
    def width(self) -> int:
        return self.ds.width

    @property
    def dtype(self) -> str:
        return self.ds.dtypes[self.bands[0] - 1]

    @property
    def resolution(self) -> float | None:
        """Metres per pixel along x, when the CRS is projected (None otherwise).

        Not for a geographic CRS: its pixels are not square on the ground away
        from the equator, and a model's one resolution would then have
        ``segment`` resample its own training scenes along y.
        """
        crs = self.ds.crs
        if crs is None or not crs.is_projected:
            return None
        size = ground_pixel_size(crs, self.ds.transform, self.ds.width, self.ds.height)
        return None if size is None else float(size[0])

    def read(self, window, num_classes: int | None = None):
        """``(image (bands, h, w), labels (h, w) int64, valid (h, w) bool)`` of ``window``.

        Labels are ``IGNORE`` where the image is nodata or outside the area of
        interest; a label value outside ``0..num_classes-1`` is an error.
        """
        from rasterio.errors import RasterioError

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                image = self.ds.read(self.bands, window=window)
                valid = self.ds.dataset_mask(window=window) > 0
            except RasterioError as exc:
                raise GlnetError(f"{self.path}: cannot read pixels {window.col_off},"
                                 f"{window.row_off} ({window.width}x{window.height}): {exc} "
                                 "(is the file truncated or corrupt?)") from None
        if image.dtype.kind == "f":  # NaN and +-inf pixels are nodata, as in segment
            valid &= np.isfinite(image).all(axis=0)
        labels = self.labels.read(window)
        labels[~valid] = IGNORE
        if self.aoi is not None:
            transform = window_transform(self.ds.transform, window.col_off, window.row_off)
            labels[~self.aoi.mask(transform, labels.shape)] = IGNORE
        if num_classes is not None:
            bad = (labels != IGNORE) & ((labels < 0) | (labels >= num_classes))
            if bad.any():
                v = int(labels[bad][0])
                raise GlnetError(f"{getattr(self.labels, 'path', self.path)}: label value {v} is outside "
                                 f"the classes 0..{num_classes - 1}")
        return image, labels, valid

    def coarse_labels(self, rect: Rect, cell: int) -> np.ndarray:
        """Labels of ``rect`` subsampled to one value per ``cell`` pixels (nearest)."""
        shape = (max(1, rect.height // cell), max(1, rect.width // cell))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            labels = self.labels.read(rect.window(), out_shape=shape)
        return labels


def scenes_from_pairs(images: Sequence[str | Path], labels: Sequence[str | Path], *,
                      class_field: str | None = None, class_name: str | None = None,
                      classes: Sequence[ClassInfo] | None = None, background: str | None = "background",
                      aoi: str | Path | None = None, bands: Sequence[int] | None = None,
                      ) -> tuple[list[TrainingScene], tuple[ClassInfo, ...]]:
    """Scenes from image rasters and their labels (rasters or vector files), and their classes."""
    if len(images) != len(labels):
        raise GlnetError(f"{len(images)} images but {len(labels)} label files: give one label file per image")
    scenes = []
    found: tuple[ClassInfo, ...] | None = tuple(classes) if classes else None
    for image, lab in zip(images, labels):
        lab = Path(lab)
        if lab.suffix.lower() in VECTOR_SUFFIXES:
            def make(ds, lab=lab, found=found):
                return VectorLabels(lab, ds, field=class_field, classes=found,
                                    background=background, constant=class_name)
        else:
            def make(ds, lab=lab):
                return RasterLabels(lab, ds)
        scene = TrainingScene(image, make, aoi=aoi, bands=bands)
        found = found or scene.labels.classes
        scenes.append(scene)
    _check_bands(scenes)
    if found is None:
        found = _scan_classes(scenes)
    check_class_values(found, "classes")
    return scenes, found


def scenes_from_folder(folder: str | Path, bands: Sequence[int] | None = None,
                       tiles: Sequence[int] | None = None,
                       ) -> tuple[list[TrainingScene], tuple[ClassInfo, ...]]:
    """Scenes of a dataset folder: DeepGlobe (``*_sat.jpg`` + ``*_mask.png``), LoveDA or Dubai.

    LoveDA (``img_dir/``, ``ann_dir/`` with 0 = no data, 1..7 classes) maps its
    classes to 0..6; DeepGlobe masks map by colour to DeepGlobe's seven classes;
    Dubai folders (``tile_N/images`` + ``tile_N/masks``, or one tile's
    ``images/`` + ``masks/``) are read by ``dubai_scenes``. ``tiles`` (tile
    numbers) picks some tiles of a Dubai folder; it is an error for other folders.
    """
    from ..nn.official import DEEPGLOBE_CLASSES

    folder = Path(folder)
    if not folder.is_dir():
        raise GlnetError(f"{folder}: dataset folder not found")
    if _dubai_tiles(folder):
        return dubai_scenes(folder, tiles=tiles, bands=bands)
    if tiles is not None:
        raise GlnetError(f"{folder}: tiles can be chosen in a Dubai folder (tile_N/images, "
                         "tile_N/masks) only")
    sats = sorted(folder.rglob("*_sat.jpg"))
    if sats:
        classes = tuple(ClassInfo(i, n, c) for i, (n, c) in enumerate(DEEPGLOBE_CLASSES))
        scenes = []
        for sat in sats:
            mask = sat.with_name(sat.name.replace("_sat.jpg", "_mask.png"))
            if not mask.exists():
                raise GlnetError(f"{sat}: no matching mask {mask.name}")
            scenes.append(TrainingScene(sat, ColorLabels(mask, classes), bands=bands))
        return scenes, classes
    img_dir, ann_dir = _find_loveda(folder)
    if img_dir is not None:
        classes = tuple(ClassInfo(i, n, c) for i, (n, c) in enumerate(LOVEDA_CLASSES))
        lut = np.array([IGNORE] + list(range(7)) + [IGNORE] * 248, dtype=np.int64)
        scenes = []
        for img in sorted(img_dir.glob("*.png")) + sorted(img_dir.glob("*.tif")):
            ann = ann_dir / img.name
            if not ann.exists():
                raise GlnetError(f"{img}: no matching annotation {ann}")
            scenes.append(TrainingScene(img, lambda ds, ann=ann: RasterLabels(ann, ds, lut=lut), bands=bands))
        if not scenes:
            raise GlnetError(f"{img_dir}: no images")
        _check_bands(scenes)
        return scenes, classes
    raise GlnetError(f"{folder}: not a dataset folder this tool knows (DeepGlobe *_sat.jpg/*_mask.png "
                     "pairs, LoveDA img_dir/ and ann_dir/, or Dubai tile_N/images and tile_N/masks)")


def dubai_scenes(folder: str | Path, tiles: Sequence[int] | None = None,
                 bands: Sequence[int] | None = None,
                 ) -> tuple[list[TrainingScene], tuple[ClassInfo, ...]]:
    """Scenes of the Dubai aerial imagery dataset (Humans in the Loop / MBRSC), and its classes.

    ``folder`` holds ``tile_N/images/image_part_00K.jpg`` with
    ``tile_N/masks/image_part_00K.png``, or is one tile folder with ``images/``
    and ``masks/``. ``tiles`` keeps only those tile numbers (e.g. ``(1, 2, 3)``
    to train on three tiles and test on the others); None keeps all. Scenes are
    named ``tile_N/image_part_00K`` and come in tile order, then part order.

    Masks are RGB or paletted PNGs, mapped by exact colour to the dataset's six
    classes: building, land (unpaved area), road, vegetation, water and
    unlabeled. "Unlabeled" (#9B9B9B) is one of the six classes the dataset
    defines, so it stays a class; black (#000000, about 0.5% of the pixels,
    not in the dataset's colour table) and any other colour are unlabelled
    (``IGNORE``, not trained on nor scored).
    """
    folder = Path(folder)
    found = _dubai_tiles(folder)
    if not found:
        raise GlnetError(f"{folder}: not a Dubai folder (tile_N/images and tile_N/masks, or "
                         "images/ and masks/)")
    if tiles is not None:
        numbers = {_tile_number(t): t for t in found}
        if None in numbers:
            raise GlnetError(f"{folder}: a single tile folder: give the folder of tile_N folders "
                             "to choose tiles")
        missing = [t for t in tiles if int(t) not in numbers]
        if missing:
            raise GlnetError(f"{folder}: no tile {', '.join(map(str, missing))} (it has tiles "
                             f"{', '.join(map(str, sorted(numbers)))})")
        found = [numbers[int(t)] for t in sorted(set(int(t) for t in tiles))]
    classes = tuple(ClassInfo(i, n, c) for i, (n, c) in enumerate(DUBAI_CLASSES))
    scenes = []
    for tile in found:
        images = sorted(p for p in (tile / "images").iterdir()
                        if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".tif"))
        if not images:
            raise GlnetError(f"{tile / 'images'}: no images")
        for img in images:
            mask = tile / "masks" / f"{img.stem}.png"
            if not mask.exists():
                raise GlnetError(f"{img}: no matching mask {mask}")
            name = f"{tile.name}/{img.stem}" if _tile_number(tile) is not None else img.stem
            scenes.append(TrainingScene(img, ColorLabels(mask, classes, exact=True), bands=bands,
                                        name=name))
    _check_bands(scenes)
    return scenes, classes


def _dubai_tiles(folder: Path) -> list[Path]:
    """The tile folders (with images/ and masks/) of a Dubai folder, in tile order; [] if none."""
    if (folder / "images").is_dir() and (folder / "masks").is_dir():
        return [folder]
    tiles = [t for t in folder.glob("tile_*") if _tile_number(t) is not None
             and (t / "images").is_dir() and (t / "masks").is_dir()]
    return sorted(tiles, key=_tile_number)


def _tile_number(tile: Path) -> int | None:
    rest = tile.name[len("tile_"):] if tile.name.startswith("tile_") else ""
    return int(rest) if rest.isdigit() else None


def _find_loveda(folder: Path):
    for img_dir in [folder / "img_dir", *sorted(folder.rglob("img_dir"))]:
        ann_dir = img_dir.parent / "ann_dir"
        if img_dir.is_dir() and ann_dir.is_dir():
            return img_dir, ann_dir
    return None, None


def _check_bands(scenes: Sequence[TrainingScene]) -> None:
    counts = {len(s.bands) for s in scenes}
    if len(counts) > 1:
        detail = ", ".join(f"{s.name}: {len(s.bands)}" for s in scenes)
        raise GlnetError(f"training scenes have different band counts ({detail}); "
                         "choose common bands with --bands")


def _scan_classes(scenes: Sequence[TrainingScene]) -> tuple[ClassInfo, ...]:
    from ..palette import default_colors

    top = 0
    for scene in scenes:
        for _, window in scene.labels.view.block_windows(1):
            a = scene.labels.read(window)
            a = a[a != IGNORE]
            if a.size:
                top = max(top, int(a.max()))
    if top >= IGNORE:
        raise GlnetError(f"{scenes[0].labels.path}: label values up to {top}: labels must be class indices")
    colors = default_colors(top + 1)
    return tuple(ClassInfo(i, f"class {i}", colors[i]) for i in range(top + 1))


def split_regions(scenes: Sequence[TrainingScene], val_fraction: float
                  ) -> tuple[list[Rect], list[Rect]]:
    """Spatially disjoint training and validation rectangles.

    The right-most ``val_fraction`` of each scene's width is held out for
    validation, so no validation pixel lies inside a training window. With a
    single scene too narrow to split, or ``val_fraction`` 0, there is no
    validation.
    """
    train, val = [], []
    for i, s in enumerate(scenes):
        w_val = int(round(s.width * val_fraction))
        if w_val < 16 or s.width - w_val < 16:
            train.append(Rect(i, 0, 0, s.height, s.width))
            continue
        train.append(Rect(i, 0, 0, s.height, s.width - w_val))
        val.append(Rect(i, 0, s.width - w_val, s.height, w_val))
    return train, val


def tile_rect(rect: Rect, size: int) -> list[Rect]:
    """Windows of at most ``size`` covering ``rect``, the last ones aligned to its far edges."""
    def starts(n):
        if n <= size:
            return [0]
        s = list(range(0, n - size, size))
        return s + [n - size]

    h, w = min(size, rect.height), min(size, rect.width)
    return [Rect(rect.scene, rect.row + r, rect.col + c, h, w)
            for r in starts(rect.height) for c in starts(rect.width)]


class WindowSampler:
    """Random training windows inside training rectangles.

    Windows with less than half of their pixels labelled are redrawn (up to
    ten times). With ``balance``, a class is drawn first (probability
    proportional to the square root of its frequency, which favours rare
    classes) and the window is centred on a random pixel of it.
    """

    def __init__(self, scenes: Sequence[TrainingScene], regions: Sequence[Rect], window: int,
                 num_classes: int, balance: bool = False, cell: int = 16) -> None:
        self.scenes, self.regions, self.window = scenes, list(regions), window
        self.num_classes = num_classes
        self.areas = np.array([r.height * r.width for r in self.regions], dtype=np.float64)
        self.balance = balance
        self.cell = cell
        self.where: dict[int, list[tuple[int, np.ndarray]]] = {}
        if balance:
            counts = np.zeros(num_classes)
            for k, rect in enumerate(self.regions):
                coarse = scenes[rect.scene].coarse_labels(rect, cell)
                for c in range(num_classes):
                    idx = np.argwhere(coarse == c)
                    if len(idx):
                        self.where.setdefault(c, []).append((k, idx))
                        counts[c] += len(idx)
            present = counts > 0
            p = np.sqrt(counts) * present
            self.class_p = p / p.sum() if p.sum() else None

    def windows_per_epoch(self) -> int:
        return max(4, math.ceil(self.areas.sum() / self.window**2))

    def draw(self, rng: np.random.Generator) -> Rect:
        for _ in range(10):
            rect = self.candidate(rng)
            _, labels, _ = self.scenes[rect.scene].read(rect.window(), self.num_classes)
            if (labels != IGNORE).mean() >= 0.5:
                return rect
        return rect

    def candidate(self, rng: np.random.Generator) -> Rect:
        """A window as drawn (by class when balancing), before the check for unlabelled pixels."""
        if self.balance and self.class_p is not None:
            c = rng.choice(self.num_classes, p=self.class_p)
            k, idx = self.where[c][rng.integers(len(self.where[c]))]
            cy, cx = idx[rng.integers(len(idx))]
            region = self.regions[k]
            h, w = min(self.window, region.height), min(self.window, region.width)
            row = int(np.clip(cy * self.cell + self.cell // 2 - h // 2, 0, region.height - h))
            col = int(np.clip(cx * self.cell + self.cell // 2 - w // 2, 0, region.width - w))
        else:
            k = rng.choice(len(self.regions), p=self.areas / self.areas.sum())
            region = self.regions[k]
            h, w = min(self.window, region.height), min(self.window, region.width)
            row = int(rng.integers(0, region.height - h + 1))
            col = int(rng.integers(0, region.width - w + 1))
        return Rect(region.scene, region.row + row, region.col + col, h, w)


def augment(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
            valid: np.ndarray | None = None):
    """Random horizontal flip and 90-degree rotation, the same for image, labels and ``valid``.

    Returns ``(image, labels, valid)`` as contiguous copies (``valid`` stays
    None when not given). Applied to the raw window before normalisation: a
    uint8 copy is a quarter of a float32 one.
    """
    k = int(rng.integers(4))
    flip = rng.random() < 0.5

    def move(a: np.ndarray | None, axes: tuple[int, int]) -> np.ndarray | None:
        if a is None:
            return None
        if flip:
            a = np.flip(a, axes[1])
        return np.ascontiguousarray(np.rot90(a, k, axes=axes))

    return move(image, (1, 2)), move(labels, (0, 1)), move(valid, (0, 1))
