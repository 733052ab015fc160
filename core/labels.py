"""Training labels read window by window onto an image's grid.

Three kinds of source, one interface (``read(window) -> uint8 class indices``,
255 where unlabelled):

``RasterLabels``
    a class-index raster; read directly when it shares the image's grid,
    otherwise warped onto it with nearest-neighbour resampling.
``VectorLabels``
    polygons with a class field (names or integers), reprojected to the
    image's CRS once and rasterised per window.
``ColorLabels``
    colour-coded masks (DeepGlobe's ``*_mask.png``, Dubai's RGB or paletted PNGs)
    mapped to classes.

An optional area of interest marks everything outside its polygons unlabelled.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .contract import CLASSES_TAG, NODATA, parse_classes
from .errors import GlnetError
from .modelfile import ClassInfo
from .palette import default_colors

IGNORE = NODATA  # unlabelled pixels: the masks' nodata value


def _open_raster(path: Path):
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as exc:
        if not Path(path).exists():
            raise GlnetError(f"{path}: file not found") from None
        raise GlnetError(f"{path}: not a raster GDAL can read ({exc})") from None


def classes_from_tags(ds) -> tuple[ClassInfo, ...] | None:
    """Classes stored in a raster's ``GLNET_CLASSES`` tag, if any."""
    text = ds.tags().get(CLASSES_TAG)
    if not text:
        return None
    try:
        return tuple(parse_classes(text))
    except ValueError:
        raise GlnetError(f"{ds.name}: {CLASSES_TAG} tag is not a valid class list") from None


def read_classes_json(path: str | Path) -> tuple[ClassInfo, ...]:
    """Classes from a JSON file: a list of {"value", "name", "color": [r, g, b]}."""
    path = Path(path)
    try:
        items = json.loads(path.read_text())
        colors = default_colors(len(items))
        classes = tuple(ClassInfo(int(c["value"]), str(c["name"]),
                                  tuple(int(v) for v in c.get("color", colors[i])))
                        for i, c in enumerate(items))
    except FileNotFoundError:
        raise GlnetError(f"{path}: classes file not found") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise GlnetError(f"{path}: not a class list of {{value, name, color}} ({exc})") from None
    check_class_values(classes, path)
    return classes


def check_class_values(classes: Sequence[ClassInfo], source) -> None:
    values = [c.value for c in classes]
    if values != list(range(len(values))):
        raise GlnetError(f"{source}: class values must be 0, 1, 2 ... in order, got {values}")


class RasterLabels:
    """A class-index label raster seen through an image's grid."""

    def __init__(self, path: str | Path, image, lut: np.ndarray | None = None) -> None:
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        self.lut = lut
        self.path = Path(path)
        self.ds = _open_raster(self.path)
        if self.ds.count != 1:
            raise GlnetError(
                f"{self.path}: labels must be one band of class indices, got {self.ds.count} bands "
                "(an RGB colour mask? convert it to class indices, or use a DeepGlobe-style folder)")
        if np.dtype(self.ds.dtypes[0]).kind not in "iu":
            raise GlnetError(f"{self.path}: labels must be integer class indices, got {self.ds.dtypes[0]}")
        self.nodata = self.ds.nodata
        same_grid = (self.ds.crs == image.crs and self.ds.transform == image.transform
                     and self.ds.shape == image.shape)
        if same_grid:
            self.view = self.ds
        else:
            if self.ds.crs is None or image.crs is None:
                if self.ds.shape == image.shape:
                    self.view = self.ds  # both ungeoreferenced: pixel grids match
                else:
                    raise GlnetError(f"{self.path}: labels have no georeferencing and a size "
                                     f"{self.ds.shape} different from the image's {image.shape}")
            else:
                from rasterio.warp import transform_bounds

                lb = transform_bounds(self.ds.crs, image.crs, *self.ds.bounds)
                ib = image.bounds
                if lb[0] >= ib[2] or lb[2] <= ib[0] or lb[1] >= ib[3] or lb[3] <= ib[1]:
                    raise GlnetError(f"{self.path}: labels do not overlap the image {image.name}")
                self.view = WarpedVRT(self.ds, crs=image.crs, transform=image.transform,
                                      width=image.width, height=image.height,
                                      resampling=Resampling.nearest,
                                      nodata=self.nodata if self.nodata is not None else IGNORE)
                self.nodata = self.view.nodata
        self.classes = classes_from_tags(self.ds)

    def read(self, window, out_shape=None) -> np.ndarray:
        a = self.view.read(1, window=window, out_shape=out_shape, boundless=False)
        out = a.astype(np.int64)
        if self.nodata is not None:
            out[a == self.nodata] = IGNORE
        if self.lut is not None:
            out = self.lut[np.clip(out, 0, len(self.lut) - 1)]
        return out


class VectorLabels:
    """Polygons with a class field, rasterised per window onto an image's grid.

    ``constant`` gives every polygon one class (building footprints, say);
    ``background`` names the class of pixels outside all polygons (None: they
    are unlabelled).
    """

    def __init__(self, path: str | Path, image, field: str | None = None,
                 classes: Sequence[ClassInfo] | None = None, background: str | None = "background",
                 constant: str | None = None) -> None:
        import fiona
        from rasterio.warp import transform_geom
        from shapely import STRtree
        from shapely.geometry import shape

        self.path = Path(path)
        if not self.path.exists():
            raise GlnetError(f"{self.path}: file not found")
        try:
            with fiona.open(self.path) as src:
                fields = list(src.schema["properties"])
                if constant is None:
                    field = field or _default_field(fields)
                    if field not in fields:
                        raise GlnetError(f"{self.path}: no class field {field!r}; its fields are: "
                                         f"{', '.join(fields) or '(none)'}")
                src_crs = src.crs_wkt or None
                records = [(f["geometry"], constant if constant is not None else f["properties"][field])
                           for f in src if f["geometry"]]
        except fiona.errors.DriverError as exc:
            raise GlnetError(f"{self.path}: not a vector file fiona can read ({exc})") from None
        if not records:
            raise GlnetError(f"{self.path}: no features with geometry (an empty label layer)")
        if src_crs and image.crs and not _same_crs(src_crs, image.crs):
            records = [(transform_geom(src_crs, image.crs, g), v) for g, v in records]
        geoms = [shape(g) for g, _ in records]
        values = [v for _, v in records]
        self.classes, lookup = _vector_classes(values, classes, background, self.path, field)
        self.background = lookup.get("__background__", IGNORE) if background else IGNORE
        self.geoms = geoms
        self.ids = np.array([lookup[str(v)] for v in values], dtype=np.int64)
        self.tree = STRtree(geoms)
        self.image = image
        minx, miny, maxx, maxy = np.array([g.bounds for g in geoms]).T
        b = image.bounds
        if minx.min() >= b.right or maxx.max() <= b.left or miny.min() >= b.top or maxy.max() <= b.bottom:
            raise GlnetError(f"{self.path}: labels do not overlap the image {image.name}")

    def read(self, window, out_shape=None) -> np.ndarray:
        from rasterio import features, windows
        from shapely import box

        h, w = out_shape or (int(window.height), int(window.width))
        transform = windows.transform(window, self.image.transform)
        if out_shape:
            transform = transform * transform.scale(window.width / w, window.height / h)
        bounds = windows.bounds(window, self.image.transform)
        hits = self.tree.query(box(*bounds))
        if len(hits) == 0:
            return np.full((h, w), self.background, dtype=np.int64)
        # Later features paint over earlier ones; keep file order.
        hits = np.sort(hits)
        shapes = ((self.geoms[i], int(self.ids[i])) for i in hits)
        return features.rasterize(shapes, out_shape=(h, w), transform=transform,
                                  fill=self.background, dtype="int32").astype(np.int64)


def _default_field(fields: list[str]) -> str:
    for name in ("class_id", "class", "class_name", "label", "classname"):
        if name in fields:
            return name
    return fields[0] if fields else "class"


def _same_crs(wkt: str, crs) -> bool:
    from rasterio.crs import CRS

    try:
        return CRS.from_user_input(wkt) == crs
    except Exception:
        return False


def _vector_classes(values, classes, background, path, field):
    """Class list and a lookup from field value (as str) to class id."""
    lookup: dict[str, int] = {}
    if classes is not None:
        by_name = {c.name: c.value for c in classes}
        for v in set(values):
            key = str(v)
            if key in by_name:
                lookup[key] = by_name[key]
            elif _is_int(v) and 0 <= int(v) < len(classes):
                lookup[key] = int(v)
            else:
                raise GlnetError(f"{path}: class {v!r} in field {field!r} is not one of the classes "
                                 f"{', '.join(c.name for c in classes)}")
        if background and background in by_name:
            lookup["__background__"] = by_name[background]
        return tuple(classes), lookup
    uniques = sorted({str(v) for v in values})
    if all(_is_int(v) for v in values):
        ids = sorted({int(v) for v in values})
        if min(ids) < 0 or max(ids) > 254:
            raise GlnetError(f"{path}: integer classes must be 0..254, got {min(ids)}..{max(ids)}")
        n = max(ids) + 1
        colors = default_colors(n)
        names = {i: f"class {i}" for i in range(n)}
        if background and 0 not in ids:
            names[0] = background
            lookup["__background__"] = 0
        return (tuple(ClassInfo(i, names[i], colors[i]) for i in range(n)),
                {**lookup, **{str(v): int(v) for v in values}})
    names = ([background] if background and background not in uniques else []) + uniques
    colors = default_colors(len(names))
    result = tuple(ClassInfo(i, n, colors[i]) for i, n in enumerate(names))
    lookup = {n: i for i, n in enumerate(names)}
    if background:
        lookup["__background__"] = lookup[background]
    return result, lookup


def _is_int(v) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, np.integer)):
        return True
    return isinstance(v, str) and v.strip().lstrip("-").isdigit()


class ColorLabels:
    """Colour-coded label images mapped to classes by colour.

    By default each channel is thresholded at 128 and a pixel takes the class
    whose colour has the same bits (DeepGlobe's masks, whose colours are not
    quite exact). With ``exact``, a pixel takes the class of exactly its
    colour, and any other colour is unlabelled (``IGNORE``). A one-band
    paletted mask (a PNG of mode 'P', which GDAL reads as palette indices
    with a colour map) is read through its colour map, so its classes are
    those of the palette's colours.
    """

    def __init__(self, path: str | Path, classes: Sequence[ClassInfo], exact: bool = False) -> None:
        self.path = Path(path)
        self.ds = _open_raster(self.path)
        self.classes = tuple(classes)
        self.exact = exact
        self.palette: np.ndarray | None = None
        if self.ds.count < 3:
            try:
                cmap = self.ds.colormap(1) if self.ds.count == 1 else None
            except ValueError:
                cmap = None
            if not cmap:
                raise GlnetError(f"{self.path}: a colour mask needs 3 bands or a colour palette, "
                                 f"got {self.ds.count} band(s) without one")
            rgb = np.zeros((3, max(256, max(cmap) + 1)), dtype=np.int64)
            for i, c in cmap.items():
                rgb[:, i] = c[:3]
            self.palette = self._classify(rgb)

    def _classify(self, rgb: np.ndarray) -> np.ndarray:
        """Class indices of colours ``rgb`` (3, ...), ``IGNORE`` where no class has the colour."""
        out = np.full(rgb.shape[1:], IGNORE, dtype=np.int64)
        if self.exact:
            code = (rgb[0].astype(np.int64) << 16) | (rgb[1].astype(np.int64) << 8) | rgb[2]
            for c in self.classes:
                out[code == (c.color[0] << 16) | (c.color[1] << 8) | c.color[2]] = c.value
            return out
        code = (rgb[0] >= 128) * 4 + (rgb[1] >= 128) * 2 + (rgb[2] >= 128)
        for c in self.classes:
            out[code == (c.color[0] >= 128) * 4 + (c.color[1] >= 128) * 2 + (c.color[2] >= 128)] = c.value
        return out

    def read(self, window, out_shape=None) -> np.ndarray:
        if self.palette is not None:
            index = self.ds.read(1, window=window, out_shape=out_shape)
            return self.palette[index]
        rgb = self.ds.read((1, 2, 3), window=window, out_shape=(3, *out_shape) if out_shape else None)
        return self._classify(rgb)


class AreaOfInterest:
    """Polygons outside which labels are ignored."""

    def __init__(self, path: str | Path, image) -> None:
        import fiona
        from rasterio.warp import transform_geom
        from shapely.geometry import shape

        self.path = Path(path)
        try:
            with fiona.open(self.path) as src:
                crs = src.crs_wkt or None
                geoms = [f["geometry"] for f in src if f["geometry"]]
        except fiona.errors.DriverError as exc:
            raise GlnetError(f"{self.path}: not a vector file fiona can read ({exc})") from None
        if crs and image.crs and not _same_crs(crs, image.crs):
            geoms = [transform_geom(crs, image.crs, g) for g in geoms]
        if not geoms:
            raise GlnetError(f"{self.path}: area of interest has no polygons")
        self.geoms = [shape(g) for g in geoms]
        self.image = image

    def mask(self, window, out_shape=None) -> np.ndarray:
        from rasterio import features, windows

        h, w = out_shape or (int(window.height), int(window.width))
        transform = windows.transform(window, self.image.transform)
        if out_shape:
            transform = transform * transform.scale(window.width / w, window.height / h)
        return features.geometry_mask(self.geoms, out_shape=(h, w), transform=transform, invert=True)
