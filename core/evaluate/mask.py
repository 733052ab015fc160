"""Score a class raster against reference labels, block by block.

The prediction is a one-band integer class raster (the project's mask format:
uint8, nodata 255, classes in the ``GLNET_CLASSES`` tag); the reference a class
raster or polygons (``references``). Pixels that are nodata in the prediction,
or have no reference, are not counted. Memory stays bounded by the block size
(and the reference polygons).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..contract import NODATA
from ..errors import GlnetError
from ..metrics import ConfusionMatrix
from ..raster.labels import IGNORE, _exists
from .references import MAX_CLASSES, check_class_raster, open_dataset, open_reference, tag_classes


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
    pred = open_dataset(pred_path)
    if pred is None:
        raise GlnetError(f"{pred_path}: not a raster GDAL can read")
    ref = None
    try:
        check_class_raster(pred, pred_path, "prediction")
        classes = tag_classes(pred, pred_path)
        notes: list[str] = []
        ref, kind, classes = open_reference(ref_path, pred, pred_path, classes, ref_field,
                                            ref_layer, background, notes)

        pred_nodata = pred.nodata if pred.nodata is not None else NODATA
        bh, bw = pred.block_shapes[0]
        step_r, step_c = block_step(block_size, bh), block_step(block_size, bw)
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


def block_step(block_size: int, internal: int) -> int:
    """Block side: ``block_size`` rounded up to whole internal blocks, unless those are
    much larger (a striped file's full-width strips)."""
    if internal <= block_size:
        return -(-block_size // internal) * internal
    return internal if internal <= 4 * block_size else block_size
