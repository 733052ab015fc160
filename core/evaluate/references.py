"""Reference labels for scoring a class raster: opened on the prediction's grid.

A reference is either

* a class raster: read through aligned windows when it shares the
  prediction's grid, otherwise warped onto that grid with nearest-neighbour
  resampling (``WarpedVRT``); its nodata, and everything outside it, is not
  counted; or
* polygons (GeoPackage, Shapefile, GeoJSON, anything OGR reads) with a class
  field holding class values or class names (names are looked up in the
  prediction's ``GLNET_CLASSES``); they are reprojected to the prediction's
  CRS once and rasterised per block onto its grid (pixel centres,
  ``all_touched=False``; where polygons overlap the later feature wins).
  Pixels outside every polygon are not counted, or count as ``background``.

Both kinds are read by training's readers (``raster.labels.RasterLabels``,
``raster.labels.VectorLabels``) with evaluation's rules (a CRS on one side
only is an error; field values are the prediction's classes) and in its words.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..contract import CLASSES_TAG, NODATA
from ..errors import GlnetError
from ..raster.ground import describe_crs
from ..raster.labels import RasterLabels, RasterWording, VectorLabels, VectorWording
from ..raster.labels import _open_raster as open_raster

MAX_CLASSES = 255
VECTOR_DEFAULT_FIELDS = ("class_id", "class_name")


def open_dataset(path: Path):
    """A rasterio dataset, or None if GDAL cannot open ``path`` as a raster."""
    try:
        return open_raster(path)
    except GlnetError:
        return None


_BANDS = ("{path}: a {role} must be one band of class values, got {count} bands "
          "(an RGB colour mask? convert it to class values first)")
_DTYPE = "{path}: a {role} must hold integer class values, got {dtype}"


def check_class_raster(ds, path: Path, role: str) -> None:
    """Refuse a raster that is not one band of integer class values."""
    if ds.count != 1:
        raise GlnetError(_BANDS.format(path=path, role=role, count=ds.count))
    if np.dtype(ds.dtypes[0]).kind not in "iu":
        raise GlnetError(_DTYPE.format(path=path, role=role, dtype=ds.dtypes[0]))


def tag_classes(ds, path: Path) -> list | None:
    """The raster's ``GLNET_CLASSES`` (None without the tag)."""
    from ..raster.masks import read_classes

    try:
        return read_classes(ds)
    except ValueError:
        raise GlnetError(f"{path}: its {CLASSES_TAG} tag is not a valid class list") from None



# --------------------------------------------------------------------------- references

def open_reference(ref_path: Path, pred, pred_path: Path, classes: list | None,
                   ref_field: str | None, ref_layer: str | None, background: int | str | None,
                   notes: list[str]):
    """The reference seen through the prediction's grid: ``(reader, kind, classes)``.

    ``reader.read(window)`` gives class values (``IGNORE`` where not counted);
    ``kind`` says how it was placed; ``classes`` are the prediction's, or else
    the reference raster's ``GLNET_CLASSES``. Notes for the user are appended
    to ``notes``. The caller closes the reader.
    """
    ref_ds = open_dataset(ref_path)
    if ref_ds is None:
        bg = None if background is None else background_value(background, classes)
        ref, kind = _vector_reference(ref_path, pred, pred_path, classes, ref_field, ref_layer,
                                      bg, notes)
        return ref, kind, classes
    if ref_field is not None or ref_layer is not None:
        ref_ds.close()
        raise GlnetError(f"{ref_path}: is a raster; --ref-field and --ref-layer apply to "
                         "vector references")
    if background is not None:
        ref_ds.close()
        raise GlnetError(f"{ref_path}: is a raster; --background applies to vector references")
    try:
        ref = _raster_reference(ref_ds, ref_path, pred, pred_path)
    except BaseException:
        ref_ds.close()
        raise
    try:
        ref_classes = tag_classes(ref_ds, ref_path)
    except BaseException:
        ref.close()
        raise
    if classes is None:
        classes = ref_classes
    elif ref_classes is not None:
        a = {c.value: c.name for c in classes}
        b = {c.value: c.name for c in ref_classes}
        diff = [v for v in sorted(set(a) & set(b)) if a[v] != b[v]]
        if diff:
            notes.append("prediction and reference name classes differently: " + ", ".join(
                f"{v} {a[v]!r} / {b[v]!r}" for v in diff[:5]))
    return ref, _RASTER_KINDS[ref.placement], classes


# The reference readers are training's (``labels``), in evaluation's words.
_RASTER_WORDING = RasterWording(
    bands=_BANDS.replace("{role}", "reference raster"),
    dtype=_DTYPE.replace("{role}", "reference raster"),
    sizes=("{path}: neither it nor {grid} is georeferenced, and their sizes differ "
           "({width} x {height} and {grid_width} x {grid_height})"),
    no_crs="{missing}: has no CRS, so the reference cannot be placed on the prediction's grid",
    no_overlap=("{path}: does not overlap the prediction {grid} (reference {crs}, prediction "
                "{grid_crs})"))
_VECTOR_WORDING = VectorWording(
    unreadable="{path}: neither a raster nor a vector file GDAL can read ({exc})",
    no_field="{path}: no field {field!r}; its fields are: {fields}",
    not_polygon="{path}: reference features must be polygons, found a {type}",
    empty="{path}: no polygons with a class in layer {layer!r}",
    no_overlap="{path}: the polygons do not overlap the prediction {grid}")
_RASTER_KINDS = {"same grid": "raster on the same grid",
                 "pixel for pixel": "raster, ungeoreferenced, pixel for pixel",
                 "warped": "raster, warped onto the prediction's grid (nearest neighbour)"}


def _raster_reference(ds, path: Path, pred, pred_path: Path) -> RasterLabels:
    """A reference class raster seen through the prediction's grid."""
    return RasterLabels(path, pred, ds=ds, grid_name=pred_path, without_crs="error",
                        tag_classes=False, wording=_RASTER_WORDING)


def _vector_reference(path: Path, pred, pred_path: Path, classes: Sequence | None,
                      ref_field: str | None, layer: str | None, background: int | None,
                      notes: list[str]) -> tuple[VectorLabels, str]:
    """Reference polygons rasterised per block onto the prediction's grid, and their kind."""
    import fiona

    try:
        layers = fiona.listlayers(path)
    except Exception as exc:  # fiona raises DriverError and friends
        raise GlnetError(f"{path}: neither a raster nor a vector file GDAL can read "
                         f"({exc})") from None
    if layer is None:
        if len(layers) != 1:
            raise GlnetError(f"{path}: has {len(layers)} layers ({', '.join(layers)}); "
                             "choose one with --ref-layer")
        layer = layers[0]
    elif layer not in layers:
        raise GlnetError(f"{path}: no layer {layer!r}; its layers are: {', '.join(layers)}")

    def choose_field(fields: list[str]) -> str:
        if ref_field is not None:
            return ref_field  # checked against ``fields`` in the words of _VECTOR_WORDING
        found = next((f for f in VECTOR_DEFAULT_FIELDS if f in fields), None)
        if found is None:
            raise GlnetError(f"{path}: no class field (class_id or class_name); its fields "
                             f"are: {', '.join(fields) or '(none)'}; choose one with "
                             "--ref-field")
        return found

    by_name = {c.name: c.value for c in classes} if classes else {}

    def class_map(values, field):
        ids = [_class_value(v, by_name, classes, path, field) for v in values]
        return ids, classes, NODATA if background is None else background

    ref = VectorLabels(path, pred, field=choose_field, layer=layer, class_map=class_map,
                       skip_unclassed=True, polygons_only=True, grid_name=pred_path,
                       wording=_VECTOR_WORDING)
    if ref.skipped:
        notes.append(f"{ref.skipped} reference feature(s) without geometry or class skipped")
    if ref.crs_missing:
        notes.append("one of the inputs has no CRS; the polygons are taken to be in the "
                     "prediction's coordinates")
    elif ref.reprojected:
        notes.append(f"polygons reprojected to the prediction's CRS ({describe_crs(pred.crs)})")
    kind = (f"polygons, field {ref.field!r}, rasterised onto the prediction's grid"
            + (f", outside them class {background}" if background is not None else ""))
    return ref, kind


def _class_value(raw, by_name: dict, classes, path: Path, ref_field: str) -> int:
    """A field value as a class value: an integer, or a name of the prediction's classes."""
    value = None
    if isinstance(raw, bool):
        value = None
    elif isinstance(raw, (int, np.integer)):
        value = int(raw)
    elif isinstance(raw, float) and raw.is_integer():
        value = int(raw)
    elif isinstance(raw, str):
        text = raw.strip()
        if text in by_name:
            return by_name[text]
        if text.lstrip("-").isdigit():
            value = int(text)
        elif not classes:
            raise GlnetError(f"{path}: field {ref_field!r} holds class names ({raw!r}), but the "
                             "prediction has no GLNET_CLASSES tag to look them up in; use a "
                             "field of class values")
        else:
            raise GlnetError(f"{path}: class {raw!r} in field {ref_field!r} is not one of the "
                             f"prediction's classes: {', '.join(by_name)}")
    if value is None:
        raise GlnetError(f"{path}: field {ref_field!r} holds {raw!r}, neither a class value nor "
                         "a class name")
    if not 0 <= value < MAX_CLASSES:
        raise GlnetError(f"{path}: class value {value} in field {ref_field!r} is outside 0..254")
    return value


def background_value(background: int | str, classes) -> int:
    """``--background`` as a class value: a value 0..254 or a name of ``classes``."""
    if isinstance(background, (int, np.integer)) or str(background).strip().isdigit():
        value = int(background)
        if not 0 <= value < MAX_CLASSES:
            raise GlnetError(f"--background must be a class value 0..254, got {value}")
        return value
    names = {c.name: c.value for c in classes} if classes else {}
    if background not in names:
        known = ", ".join(names) if names else "none: the prediction has no GLNET_CLASSES tag"
        raise GlnetError(f"--background {background!r} is not a class name (known: {known})")
    return names[background]
