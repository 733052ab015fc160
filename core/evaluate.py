"""Score a class raster against reference labels, block by block.

The prediction is a one-band integer class raster (the project's mask format:
uint8, nodata 255, classes in the ``GLNET_CLASSES`` tag). The reference is
either

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

Pixels that are nodata in the prediction are not counted either. Memory stays
bounded by the block size (and the reference polygons). Both kinds of
reference are read by training's readers (``labels.RasterLabels``,
``labels.VectorLabels``) with evaluation's rules (a CRS on one side only is an
error; field values are the prediction's classes) and in its words.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .contract import CLASSES_TAG, NODATA
from .errors import GlnetError
from .metrics import ConfusionMatrix
from .raster.ground import describe_crs
from .raster.labels import IGNORE, RasterLabels, RasterWording, VectorLabels, VectorWording, _exists
from .raster.labels import _open_raster as open_raster

MAX_CLASSES = 255
VECTOR_DEFAULT_FIELDS = ("class_id", "class_name")


@dataclass
class Evaluation:
    """The result of ``evaluate``: the confusion matrix and where it came from."""

    matrix: ConfusionMatrix
    class_names: list[str]
    prediction: str
    reference: str
    reference_kind: str
    skipped_pixels: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"prediction": self.prediction, "reference": self.reference,
                "reference_kind": self.reference_kind, "skipped_pixels": self.skipped_pixels,
                "notes": self.notes, **self.matrix.to_dict(self.class_names)}

    def to_json(self) -> str:
        """One line of JSON (like ``glnet info --json``); NaN scores are null."""
        return json.dumps(self.to_dict(), allow_nan=False)

    def format(self) -> str:
        lines = [f"prediction  {self.prediction}",
                 f"reference   {self.reference} ({self.reference_kind})",
                 f"counted     {self.matrix.total:,} pixels; {self.skipped_pixels:,} skipped "
                 "(nodata, or no reference)"]
        lines += [f"note        {n}" for n in self.notes]
        return "\n".join(lines) + "\n\n" + self.matrix.format_table(self.class_names)


# --------------------------------------------------------------------------- opening


def _open_raster(path: Path):
    """A rasterio dataset, or None if GDAL cannot open ``path`` as a raster."""
    try:
        return open_raster(path)
    except GlnetError:
        return None


_BANDS = ("{path}: a {role} must be one band of class values, got {count} bands "
          "(an RGB colour mask? convert it to class values first)")
_DTYPE = "{path}: a {role} must hold integer class values, got {dtype}"


def _class_raster(ds, path: Path, role: str) -> None:
    if ds.count != 1:
        raise GlnetError(_BANDS.format(path=path, role=role, count=ds.count))
    if np.dtype(ds.dtypes[0]).kind not in "iu":
        raise GlnetError(_DTYPE.format(path=path, role=role, dtype=ds.dtypes[0]))


def _tag_classes(ds, path: Path) -> list | None:
    from .raster.masks import read_classes

    try:
        return read_classes(ds)
    except ValueError:
        raise GlnetError(f"{path}: its {CLASSES_TAG} tag is not a valid class list") from None


# --------------------------------------------------------------------------- references

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


# --------------------------------------------------------------------------- evaluate


def evaluate(prediction: str | Path, reference: str | Path, *, ref_field: str | None = None,
             ref_layer: str | None = None, ignore_classes: Sequence[int] = (),
             background: int | str | None = None, block_size: int = 1024,
             progress: Callable[..., None] | None = None) -> Evaluation:
    """Compare a class raster with a reference raster or reference polygons.

    Args:
        prediction: one-band integer class raster; its nodata (255 if unset)
            and masked pixels are not counted.
        reference: class raster, or vector file of polygons.
        ref_field: class field of a vector reference (default ``class_id``,
            else ``class_name``).
        ref_layer: layer of a multi-layer vector file.
        ignore_classes: classes left out of mIoU and mean F1.
        background: class (value or name) of pixels outside all reference
            polygons; None leaves them uncounted. Vector references only.
        block_size: side of the blocks read at a time, in pixels (rounded up
            to the prediction's internal tiles).
        progress: called as ``progress(fraction)`` after each block (the
            project's progress convention, see ``progress.py``).
    """
    from rasterio.windows import Window

    pred_path, ref_path = Path(prediction), Path(reference)
    for p in (pred_path, ref_path):
        if not _exists(p):
            raise GlnetError(f"{p}: file not found")
        if p.is_dir():
            raise GlnetError(f"{p}: is a folder, not a raster or vector file")
    if block_size < 16:
        raise GlnetError(f"--block-size must be at least 16 pixels, got {block_size}")
    pred = _open_raster(pred_path)
    if pred is None:
        raise GlnetError(f"{pred_path}: not a raster GDAL can read")
    ref = None
    try:
        _class_raster(pred, pred_path, "prediction")
        classes = _tag_classes(pred, pred_path)
        notes: list[str] = []
        ref_ds = _open_raster(ref_path)
        if ref_ds is not None:
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
            kind = _RASTER_KINDS[ref.placement]
            ref_classes = _tag_classes(ref_ds, ref_path)
            if classes is None:
                classes = ref_classes
            elif ref_classes is not None:
                a = {c.value: c.name for c in classes}
                b = {c.value: c.name for c in ref_classes}
                diff = [v for v in sorted(set(a) & set(b)) if a[v] != b[v]]
                if diff:
                    notes.append("prediction and reference name classes differently: " + ", ".join(
                        f"{v} {a[v]!r} / {b[v]!r}" for v in diff[:5]))
        else:
            bg = None if background is None else _background_value(background, classes)
            ref, kind = _vector_reference(ref_path, pred, pred_path, classes, ref_field, ref_layer,
                                          bg, notes)

        pred_nodata = pred.nodata if pred.nodata is not None else NODATA
        bh, bw = pred.block_shapes[0]
        step_r, step_c = _step(block_size, bh), _step(block_size, bw)
        windows = [Window(c, r, min(step_c, pred.width - c), min(step_r, pred.height - r))
                   for r in range(0, pred.height, step_r) for c in range(0, pred.width, step_c)]
        big = ConfusionMatrix(MAX_CLASSES + 1)
        skipped = 0
        for i, window in enumerate(windows):
            p = pred.read(1, window=window)
            valid = (p != pred_nodata) & (pred.read_masks(1, window=window) != 0)
            r = ref.read(window)
            valid &= r != IGNORE
            skipped += int(valid.size - np.count_nonzero(valid))
            for name, a, path in (("prediction", p, pred_path), ("reference", r, ref_path)):
                v = a[valid]
                if v.size and (int(v.min()) < 0 or int(v.max()) >= MAX_CLASSES):
                    bad = np.unique(v[(v < 0) | (v >= MAX_CLASSES)])[:5]
                    raise GlnetError(f"{path}: {name} has values {', '.join(map(str, bad))} "
                                     "that are not classes (0..254) nor its nodata")
            big.update(p, r, valid)
            if progress is not None:
                progress((i + 1) / len(windows))
    finally:
        pred.close()
        if ref is not None:
            ref.close()

    seen = np.nonzero(big.ref_counts + big.pred_counts)[0]
    n = max(max((c.value for c in classes), default=-1) + 1 if classes else 0,
            int(seen.max()) + 1 if seen.size else 1)
    bad = [c for c in ignore_classes if not 0 <= int(c) < n]
    if bad:
        raise GlnetError(f"--ignore-classes: {', '.join(map(str, bad))} not among the classes "
                         f"0..{n - 1}")
    matrix = ConfusionMatrix(n, ignore_classes)
    matrix.matrix[:] = big.matrix[:n, :n]
    names = {c.value: c.name for c in classes} if classes else {}
    return Evaluation(matrix, [names.get(c, f"class {c}") for c in range(n)], str(pred_path),
                      str(ref_path), kind, skipped, notes)


def _step(block_size: int, internal: int) -> int:
    """Block side: ``block_size`` rounded up to whole internal blocks, unless those are
    much larger (a striped file's full-width strips)."""
    if internal <= block_size:
        return -(-block_size // internal) * internal
    return internal if internal <= 4 * block_size else block_size


def _background_value(background: int | str, classes) -> int:
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


# --------------------------------------------------------------------------- a model


def evaluate_model(model: str | Path, scene: str | Path, reference: str | Path, *,
                   ref_field: str | None = None, ref_layer: str | None = None,
                   ignore_classes: Sequence[int] = (), background: int | str | None = None,
                   block_size: int = 1024, segment_options=None,
                   progress: Callable[..., None] | None = None) -> Evaluation:
    """Segment ``scene`` with ``model`` and score the mask against ``reference``.

    The scene is segmented by ``glnet.segment.scene`` (streamed window by window) into
    a temporary mask that is removed afterwards, then scored exactly as
    ``evaluate(mask, reference)``. ``segment_options`` (a ``SegmentOptions``)
    sets bands, mode, device, threads and so on. Reference values must be among
    the model's classes.
    """
    import tempfile

    from .config import SegmentOptions
    from .modelfile import read_metadata
    from .segment.scene import segment

    model_path, scene_path, ref_path = Path(model), Path(scene), Path(reference)
    for p in (model_path, scene_path, ref_path):
        if not _exists(p):
            raise GlnetError(f"{p}: file not found")
    meta = read_metadata(model_path)
    n = meta.net.num_classes
    _check_ignore(ignore_classes, n)
    ref_ds = _open_raster(ref_path)
    if ref_ds is not None:
        try:
            _class_raster(ref_ds, ref_path, "reference raster")
            _check_raster_classes(ref_ds, ref_path, meta)
        finally:
            ref_ds.close()
    opts = segment_options or SegmentOptions()
    opts = opts.replace(overviews=False, style=False, probabilities=None, overwrite=True)
    report = progress or (lambda *a, **k: None)
    with tempfile.TemporaryDirectory(prefix="glnet-evaluate-") as tmp:
        mask = Path(tmp) / "mask.tif"
        segment(scene_path, model_path, mask, opts, progress=lambda f, *m: report(0.9 * f, *m))
        result = evaluate(mask, ref_path, ref_field=ref_field, ref_layer=ref_layer,
                          ignore_classes=ignore_classes, background=background,
                          block_size=block_size, progress=lambda f: report(0.9 + 0.1 * f))
    _check_matrix_classes(result, ref_path, meta)
    result.prediction = f"{scene_path} segmented with {model_path}"
    return result


def evaluate_model_on_dataset(model: str | Path, folder: str | Path, *,
                              ignore_classes: Sequence[int] = (), block_size: int = 1024,
                              segment_options=None, tiles: Sequence[int] | None = None,
                              progress: Callable[..., None] | None = None) -> Evaluation:
    """Segment every scene of a dataset folder (DeepGlobe, LoveDA or Dubai, as ``glnet train
    --dataset`` reads them) with ``model`` and score all of them in one confusion matrix.

    Each scene is segmented into a temporary mask and compared block by block
    with its labels; pixels without a label (LoveDA's 0, Dubai's black) or nodata
    are not counted. ``tiles`` picks some tiles of a Dubai folder (see
    ``datasets.dubai_scenes``).
    """
    import tempfile

    from rasterio.windows import Window

    from .config import SegmentOptions
    from .modelfile import read_metadata
    from .segment.scene import segment
    from .train.datasets import scenes_from_folder

    model_path, folder = Path(model), Path(folder)
    if not model_path.exists():
        raise GlnetError(f"{model_path}: file not found")
    meta = read_metadata(model_path)
    n = meta.net.num_classes
    _check_ignore(ignore_classes, n)
    scenes, classes = scenes_from_folder(folder, tiles=tiles)
    if [c.name for c in classes] != meta.class_names:
        raise GlnetError(f"{folder}: its classes ({', '.join(c.name for c in classes)}) are not "
                         f"the model's ({', '.join(meta.class_names)})")
    opts = segment_options or SegmentOptions()
    opts = opts.replace(overviews=False, style=False, probabilities=None, overwrite=True)
    report = progress or (lambda *a, **k: None)
    matrix = ConfusionMatrix(n, ignore_classes)
    skipped = 0
    with tempfile.TemporaryDirectory(prefix="glnet-evaluate-") as tmp:
        for k, scene in enumerate(scenes):
            def part(f, *m, k=k):
                report((k + 0.9 * f) / len(scenes), *m)

            mask_path = Path(tmp) / f"mask{k}.tif"
            segment(scene.path, model_path, mask_path, opts, progress=part)
            with _open_raster(mask_path) as mask:
                step = _step(block_size, mask.block_shapes[0][0])
                for r in range(0, mask.height, step):
                    for c in range(0, mask.width, step):
                        window = Window(c, r, min(step, mask.width - c), min(step, mask.height - r))
                        pred = mask.read(1, window=window)
                        labels = scene.labels.read(window)
                        valid = (pred != NODATA) & (labels != IGNORE)
                        bad = valid & (labels >= n)
                        if bad.any():
                            raise GlnetError(f"{getattr(scene.labels, 'path', scene.path)}: label "
                                             f"value {int(labels[bad][0])} is outside the model's "
                                             f"classes 0..{n - 1}")
                        skipped += int(valid.size - np.count_nonzero(valid))
                        matrix.update(pred, labels, valid)
            mask_path.unlink()
            report((k + 1) / len(scenes))
    kind = f"{len(scenes)} labelled scene(s) of a dataset folder"
    return Evaluation(matrix, meta.class_names, f"{folder} segmented with {model_path}",
                      str(folder), kind, skipped, [])


def _check_ignore(ignore_classes: Sequence[int], n: int) -> None:
    bad = [c for c in ignore_classes if not 0 <= int(c) < n]
    if bad:
        raise GlnetError(f"--ignore-classes: {', '.join(map(str, bad))} not among the model's "
                         f"classes 0..{n - 1}")


def _describe_classes(meta) -> str:
    return ", ".join(f"{i} {name}" for i, name in enumerate(meta.class_names))


def _check_raster_classes(ds, path: Path, meta) -> None:
    """Refuse a reference raster with values that are not the model's classes (before
    spending time on segmenting)."""
    n = meta.net.num_classes
    nodata = ds.nodata if ds.nodata is not None else NODATA
    found: set[int] = set()
    for _, window in ds.block_windows(1):
        a = ds.read(1, window=window)
        a = a[(a != nodata) & (a != NODATA) & ((a < 0) | (a >= n))]
        if a.size:
            found.update(np.unique(a)[:5].tolist())
            break
    if found:
        raise GlnetError(f"{path}: reference has class values {', '.join(map(str, sorted(found)))} "
                         f"that the model does not have (its classes: {_describe_classes(meta)})")


def _check_matrix_classes(result: Evaluation, path: Path, meta) -> None:
    n = meta.net.num_classes
    extra = [c for c in range(n, result.matrix.num_classes) if result.matrix.ref_counts[c]]
    if extra:
        raise GlnetError(f"{path}: reference has class values {', '.join(map(str, extra[:5]))} "
                         f"that the model does not have (its classes: {_describe_classes(meta)})")
