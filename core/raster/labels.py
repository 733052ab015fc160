"""Labels read window by window onto a raster's grid.

Training reads its labels onto each image's grid (``datasets``); evaluation
reads reference labels onto the grid of the prediction it scores
(``evaluate``). Three kinds of source, one interface (``read(window,
out_shape=None)`` -> int64 class indices, ``IGNORE`` (255) where unlabelled):

``RasterLabels``
    a class-index raster; read directly when it shares the grid, otherwise
    warped onto it with nearest-neighbour resampling.
``VectorLabels``
    polygons with a class field (names or integers), reprojected to the
    grid's CRS once and rasterised per window.
``ColorLabels``
    colour-coded masks (DeepGlobe's ``*_mask.png``, Dubai's RGB or paletted PNGs)
    mapped to classes.

What training and evaluation do differently (the words of their errors, what
a missing CRS means, how field values become classes) are parameters of the
readers, with training's as the defaults. Areas of interest are ``aoi``'s.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..contract import CLASSES_TAG, NODATA, parse_classes
from ..errors import GlnetError
from ..modelfile import ClassInfo
from ..palette import default_colors

IGNORE = NODATA  # unlabelled pixels: the masks' nodata value
# Polygons with more vertices than this are clipped to each window before
# rasterising (GDAL's scanline fill walks all edges for every row).
_CLIP_VERTICES = 2000


def _exists(path: Path) -> bool:
    return str(path).startswith("/vsi") or path.exists()


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


# Caller-specific words for the readers' errors. Templates are ``str.format``ted with
# ``path`` (the labels), ``grid`` (the raster whose grid they are read onto) and the
# fields each one names.


@dataclass(frozen=True)
class RasterWording:
    """``RasterLabels``' errors. ``bands``: ``count``; ``dtype``: ``dtype``; ``sizes`` (no
    georeferencing, sizes differ): ``shape``, ``grid_shape`` (rows, columns), ``width``,
    ``height``, ``grid_width``, ``grid_height``; ``no_crs`` (only one of the two has a
    CRS, with ``without_crs="error"``): ``missing``, the file without; ``no_overlap``:
    ``crs``, ``grid_crs`` (``ground.describe_crs``)."""

    bands: str = ("{path}: labels must be one band of class indices, got {count} bands "
                  "(an RGB colour mask? convert it to class indices, or use a DeepGlobe-style "
                  "folder)")
    dtype: str = "{path}: labels must be integer class indices, got {dtype}"
    sizes: str = ("{path}: labels have no georeferencing and a size {shape} different from the "
                  "image's {grid_shape}")
    no_crs: str = "{missing}: has no CRS, so the labels cannot be placed on the image's grid"
    no_overlap: str = "{path}: labels do not overlap the image {grid}"


@dataclass(frozen=True)
class VectorWording:
    """``VectorLabels``' errors. ``unreadable``: ``exc``; ``no_field``: ``field``,
    ``fields`` (comma-separated); ``not_polygon``: ``type``; ``empty``: ``layer``."""

    unreadable: str = "{path}: not a vector file fiona can read ({exc})"
    no_field: str = "{path}: no class field {field!r}; its fields are: {fields}"
    not_polygon: str = "{path}: label features must be polygons, found a {type}"
    empty: str = "{path}: no features with geometry (an empty label layer)"
    no_overlap: str = "{path}: labels do not overlap the image {grid}"


def _overlaps(a, b) -> bool:
    """Whether boxes ``(left, bottom, right, top)`` share more than an edge."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


class RasterLabels:
    """A class-index raster seen through another raster's grid (``grid``: a training
    image, or the prediction being scored).

    Read directly when it shares the grid, otherwise warped onto it with
    nearest-neighbour resampling (``WarpedVRT``); its nodata, and everything
    outside it, reads as ``IGNORE``. Without georeferencing on both sides the
    two are taken pixel for pixel (their sizes must match); ``without_crs``
    says what happens when only one side has a CRS: "pixels" takes them pixel
    for pixel too (training), "error" refuses (evaluation). ``lut`` maps the
    values read (a LoveDA annotation's 1..7 to 0..6, say). ``ds`` is the
    labels already open (``close`` closes it); ``grid_name`` names the grid's
    raster in messages (default its dataset name); ``tag_classes`` reads the
    labels' ``GLNET_CLASSES`` tag into ``classes`` (None without one).

    ``placement`` says how the labels met the grid: "same grid", "pixel for
    pixel" or "warped".
    """

    def __init__(self, path: str | Path, grid, lut: np.ndarray | None = None, *, ds=None,
                 grid_name=None, without_crs: str = "pixels", tag_classes: bool = True,
                 wording: RasterWording = RasterWording()) -> None:
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        from .ground import describe_crs

        self.lut = lut
        self.path = Path(path)
        self.ds = _open_raster(self.path) if ds is None else ds
        ds = self.ds
        grid_name = grid.name if grid_name is None else grid_name
        if ds.count != 1:
            raise GlnetError(wording.bands.format(path=self.path, grid=grid_name, count=ds.count))
        if np.dtype(ds.dtypes[0]).kind not in "iu":
            raise GlnetError(wording.dtype.format(path=self.path, grid=grid_name, dtype=ds.dtypes[0]))
        self.nodata = ds.nodata
        if ds.crs == grid.crs and ds.transform == grid.transform and ds.shape == grid.shape:
            self.view, self.placement = ds, "same grid"
        elif ds.crs is None or grid.crs is None:
            if ds.crs is not None or grid.crs is not None:
                if without_crs != "pixels":
                    missing = self.path if ds.crs is None else grid_name
                    raise GlnetError(wording.no_crs.format(path=self.path, grid=grid_name,
                                                           missing=missing))
            if ds.shape != grid.shape:
                raise GlnetError(wording.sizes.format(
                    path=self.path, grid=grid_name, shape=ds.shape, grid_shape=grid.shape,
                    width=ds.width, height=ds.height, grid_width=grid.width,
                    grid_height=grid.height))
            self.view, self.placement = ds, "pixel for pixel"
        else:
            from rasterio.warp import transform_bounds

            bounds = transform_bounds(ds.crs, grid.crs, *ds.bounds, densify_pts=21)
            if not _overlaps(bounds, tuple(grid.bounds)):
                raise GlnetError(wording.no_overlap.format(
                    path=self.path, grid=grid_name, crs=describe_crs(ds.crs),
                    grid_crs=describe_crs(grid.crs)))
            self.nodata = ds.nodata if ds.nodata is not None else IGNORE
            self.view = WarpedVRT(ds, crs=grid.crs, transform=grid.transform, width=grid.width,
                                  height=grid.height, resampling=Resampling.nearest,
                                  src_nodata=ds.nodata, nodata=self.nodata)
            self.placement = "warped"
        self.classes = classes_from_tags(ds) if tag_classes else None

    def read(self, window, out_shape=None) -> np.ndarray:
        """Class indices (int64) of ``window`` of the grid (resampled to ``out_shape``),
        ``IGNORE`` where unlabelled."""
        a = self.view.read(1, window=window, out_shape=out_shape, boundless=False)
        out = a.astype(np.int64)
        if self.nodata is not None:
            out[a == self.nodata] = IGNORE
        if self.lut is not None:
            out = self.lut[np.clip(out, 0, len(self.lut) - 1)]
        return out

    def close(self) -> None:
        if self.view is not self.ds:
            self.view.close()
        self.ds.close()


class VectorLabels:
    """Polygons with a class field, rasterised window by window onto a raster's grid
    (``grid``: a training image, or the prediction being scored).

    The features of ``layer`` (default: the first) are reprojected to the
    grid's CRS once (taken as they are when either side has no CRS) and
    rasterised per window at pixel centres (``all_touched=False``), the later
    feature winning where they overlap; polygons of more than
    ``_CLIP_VERTICES`` vertices are clipped to the window first.

    ``field`` is the class field's name, or a function that picks it from the
    layer's field names (raising its caller's error when none fits); None
    takes the first of class_id, class, class_name, label, classname, else the
    first field. ``constant`` gives every polygon that one class (building
    footprints, say) and reads no field.

    ``class_map(values, field) -> (ids, classes, fill)`` turns the field's
    values (in feature order) into class ids, the class list (or None) and the
    value of pixels outside all polygons. By default (``None``) values are
    names or integers: looked up in ``classes`` when given, else a class list
    is built from them, with ``background`` naming the class outside the
    polygons (None: those pixels are ``IGNORE``).

    Features without geometry are skipped, and with ``skip_unclassed`` those
    whose value is None too (counted in ``skipped``); ``polygons_only``
    refuses other geometry types. ``grid_name`` names the grid's raster in
    messages. ``reprojected`` and ``crs_missing`` (exactly one side has no
    CRS) say how the polygons met the grid.
    """

    def __init__(self, path: str | Path, grid, field=None, classes: Sequence[ClassInfo] | None = None,
                 background: str | None = "background", constant: str | None = None, *,
                 layer: str | None = None, class_map=None, skip_unclassed: bool = False,
                 polygons_only: bool = False, grid_name=None,
                 wording: VectorWording = VectorWording()) -> None:
        import fiona
        import shapely
        from rasterio.warp import transform_geom
        from shapely.geometry import shape

        from .ground import same_crs

        self.path = path = Path(path)
        grid_name = grid.name if grid_name is None else grid_name
        if not _exists(path):
            raise GlnetError(f"{path}: file not found")
        try:
            with fiona.open(path, layer=layer) as src:
                fields = list(src.schema["properties"])
                if constant is None:
                    field = field(fields) if callable(field) else field or _default_field(fields)
                    if field not in fields:
                        raise GlnetError(wording.no_field.format(
                            path=path, field=field, fields=", ".join(fields) or "(none)"))
                src_crs = src.crs_wkt or None
                records = [(f.geometry, constant if constant is not None else f.properties[field])
                           for f in src]
        except fiona.errors.DriverError as exc:
            raise GlnetError(wording.unreadable.format(path=path, exc=exc)) from None
        self.field, self.layer = field, layer
        geoms, values, self.skipped = [], [], 0
        for geom, value in records:
            if geom is None or (skip_unclassed and value is None):
                self.skipped += 1
                continue
            if polygons_only and geom["type"] not in ("Polygon", "MultiPolygon"):
                raise GlnetError(wording.not_polygon.format(path=path, type=geom["type"]))
            geoms.append(geom)
            values.append(value)
        if not geoms:
            raise GlnetError(wording.empty.format(path=path, layer=layer))
        self.crs_missing = (src_crs is None) != (grid.crs is None)
        self.reprojected = bool(src_crs and grid.crs is not None and not same_crs(src_crs, grid.crs))
        if self.reprojected:
            geoms = [transform_geom(src_crs, grid.crs, g) for g in geoms]
        if class_map is None:
            def class_map(values, field):
                found, lookup = _vector_classes(values, classes, background, path, field)
                fill = lookup.get("__background__", IGNORE) if background else IGNORE
                return [lookup[str(v)] for v in values], found, fill
        ids, self.classes, self.fill = class_map(values, field)
        self.geoms = np.array([shape(g) for g in geoms], dtype=object)
        self.ids = np.asarray(ids, dtype=np.int64)
        self.big = shapely.get_num_coordinates(self.geoms) > _CLIP_VERTICES
        if not _overlaps(tuple(shapely.total_bounds(self.geoms)), tuple(grid.bounds)):
            raise GlnetError(wording.no_overlap.format(path=path, grid=grid_name))
        self.tree = shapely.STRtree(self.geoms)
        self.transform = grid.transform

    def read(self, window, out_shape=None) -> np.ndarray:
        """Class indices (int64) of ``window`` of the grid (rasterised at ``out_shape``),
        ``fill`` outside all polygons."""
        import shapely
        from rasterio import features

        from .ground import window_transform

        h, w = out_shape or (int(window.height), int(window.width))
        scale = (window.width / w, window.height / h) if out_shape else (1.0, 1.0)
        transform = window_transform(self.transform, window.col_off, window.row_off, *scale)
        xs = [transform.c + i * transform.a + j * transform.b for i in (0, w) for j in (0, h)]
        ys = [transform.f + i * transform.d + j * transform.e for i in (0, w) for j in (0, h)]
        left, bottom, right, top = min(xs), min(ys), max(xs), max(ys)
        # Later features paint over earlier ones: keep file order.
        hits = np.sort(self.tree.query(shapely.box(left, bottom, right, top)))
        # A margin of two pixels keeps every pixel centre of the block away from the
        # clipping rectangle, so clipping changes no pixel.
        mx = 2 * abs(transform.a) + 2 * abs(transform.b)
        my = 2 * abs(transform.e) + 2 * abs(transform.d)
        shapes = []
        for i in hits:
            g = self.geoms[i]
            if self.big[i]:
                g = shapely.clip_by_rect(g, left - mx, bottom - my, right + mx, top + my)
                if g.is_empty:
                    continue
            shapes.append((g, int(self.ids[i])))
        if not shapes:
            return np.full((h, w), self.fill, dtype=np.int64)
        return features.rasterize(shapes, out_shape=(h, w), transform=transform, fill=self.fill,
                                  dtype="int32", all_touched=False).astype(np.int64)

    def close(self) -> None:
        """Nothing to close (the polygons are in memory); for symmetry with ``RasterLabels``."""


def _default_field(fields: list[str]) -> str:
    for name in ("class_id", "class", "class_name", "label", "classname"):
        if name in fields:
            return name
    return fields[0] if fields else "class"


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
