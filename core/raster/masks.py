"""Land-cover masks on disk: block writes to a tiled GeoTIFF, finished as a COG.

Mask format (shared with the vectorizer and the QGIS plugin; its names, tag
and style are defined in ``contract``):

* one band, uint8, class values ``0..N-1``, nodata ``255``;
* a colour table with each class's colour (nodata transparent);
* the dataset tag ``GLNET_CLASSES``: a JSON list of ``{"value", "name",
  "color": [r, g, b]}`` in the default tag namespace; the band description is
  ``"land cover class"``.

GeoTIFF cannot hold category names itself (GDAL keeps them in a ``.aux.xml``
sidecar, which is not part of a COG), so QGIS would label the legend with bare
values. ``write_qml`` writes ``MASK.qml`` beside the mask: QGIS loads it as the
layer's default style, a paletted renderer with the class names.

The optional probability raster is uint8 percent (0..100, scale 0.01 so that
GDAL's unscaled value is the probability), nodata 255: one band per class, or
a single band with the winning class's probability ("confidence").

Blocks are written to a tiled, compressed GTiff as they are finished;
``finish_cog`` copies it with GDAL's COG driver (which builds the overviews) to
another temporary file of the same folder, which the caller renames.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..contract import (
    CLASSES_TAG,
    NODATA,
    ClassInfo,
    classes_json,
    mask_qml,
    new_temp,
    parse_classes,
)
from ..files import atomic_output

MASK_DESCRIPTION = "land cover class"
# The intermediate GTiff: small tiles, fast compression (it is rewritten as a COG).
BLOCK = 256
_INTERMEDIATE = dict(driver="GTiff", tiled=True, blockxsize=BLOCK, blockysize=BLOCK,
                     compress="deflate", zlevel=1, bigtiff="IF_SAFER")


def read_classes(dataset) -> list[ClassInfo] | None:
    """Classes stored in a mask's ``GLNET_CLASSES`` tag (an open rasterio dataset), or None.

    Raises ``ValueError`` if the tag is not a class list (``contract.parse_classes``).
    """
    text = dataset.tags().get(CLASSES_TAG)
    if not text:
        return None
    return parse_classes(text)


def colormap(classes: Sequence[ClassInfo]) -> dict[int, tuple[int, int, int, int]]:
    """Colour table entries: each class's colour, nodata transparent."""
    cmap = {c.value: (*c.color, 255) for c in classes}
    cmap[NODATA] = (0, 0, 0, 0)
    return cmap


def temp_path(beside: Path, tag: str) -> Path:
    """A new empty temporary file in ``beside``'s folder (removed by the caller)."""
    return new_temp(beside, f".{tag}.tif")


def remove_quietly(path: Path | None) -> None:
    """Remove a temporary file and anything GDAL may have left beside it."""
    if path is None:
        return
    for p in (path, Path(f"{path}.ovr"), Path(f"{path}.ovr.tmp"), Path(f"{path}.aux.xml"),
              Path(f"{path}.msk")):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


class MaskWriter:
    """Writes finished cells: the class mask and, optionally, probabilities.

    Both files are tiled GTiffs of ``width`` x ``height`` with the given CRS and
    transform. ``write`` takes a cell's blended probabilities (or None for
    nodata) and validity; class pixel counts are kept for the summary.
    """

    def __init__(self, mask_path: Path, classes: Sequence[ClassInfo], *, width: int,
                 height: int, crs, transform, probabilities_path: Path | None = None,
                 probability_kind: str = "classes") -> None:
        import rasterio
        from affine import Affine

        if crs is None and transform == Affine.identity():
            # A scene without georeferencing: no geotransform either (rasterio's identity
            # written out would put the mask upside down under its image in QGIS).
            transform = None
        self.classes = list(classes)
        self.counts = np.zeros(len(self.classes), dtype=np.int64)
        self.kind = probability_kind
        profile = dict(_INTERMEDIATE, width=width, height=height, crs=crs, transform=transform)
        self.mask = rasterio.open(mask_path, "w", count=1, dtype="uint8", nodata=NODATA,
                                  **profile)
        self.probs = None
        try:
            self.mask.write_colormap(1, colormap(self.classes))
            self.mask.update_tags(**{CLASSES_TAG: classes_json(self.classes)})
            self.mask.set_band_description(1, MASK_DESCRIPTION)
            if probabilities_path is not None:
                n = len(self.classes) if probability_kind == "classes" else 1
                self.probs = rasterio.open(probabilities_path, "w", count=n, dtype="uint8",
                                           nodata=NODATA, **profile)
                names = ([f"probability of {c.name} (%)" for c in self.classes]
                         if probability_kind == "classes" else ["confidence (%)"])
                for i, name in enumerate(names, start=1):
                    self.probs.set_band_description(i, name)
                self.probs.scales = (0.01,) * n
                self.probs.offsets = (0.0,) * n
                self.probs.update_tags(**{CLASSES_TAG: classes_json(self.classes),
                                          "GLNET_PROBABILITY": probability_kind})
        except BaseException:
            self.close()
            raise

    def write(self, top: int, left: int, height: int, width: int,
              probabilities: np.ndarray | None, valid: np.ndarray | None) -> None:
        from rasterio.windows import Window

        win = Window(left, top, width, height)
        if probabilities is None or valid is None:
            self.mask.write(np.full((1, height, width), NODATA, np.uint8), window=win)
            if self.probs is not None:
                self.probs.write(np.full((self.probs.count, height, width), NODATA, np.uint8),
                                 window=win)
            return
        labels = probabilities.argmax(axis=0).astype(np.uint8)
        labels[~valid] = NODATA
        self.counts += np.bincount(labels[valid], minlength=len(self.classes))[:len(self.classes)]
        self.mask.write(labels[None], window=win)
        if self.probs is not None:
            if self.kind == "classes":
                pct = np.rint(np.clip(probabilities, 0.0, 1.0) * 100).astype(np.uint8)
                pct[:, ~valid] = NODATA
            else:
                pct = np.rint(np.clip(probabilities.max(axis=0), 0.0, 1.0) * 100).astype(np.uint8)
                pct[~valid] = NODATA
                pct = pct[None]
            self.probs.write(pct, window=win)

    def close(self) -> None:
        for ds in (self.mask, self.probs):
            if ds is not None and not ds.closed:
                ds.close()


def finish_cog(source: Path, destination: Path, *, categorical: bool,
               overviews: bool = True) -> None:
    """Copy a finished tiled GTiff to ``destination`` as a Cloud Optimized GeoTIFF.

    Classes get MODE overviews (the most frequent class; nodata ignored),
    probabilities AVERAGE ones. Colour table, tags, band descriptions, scales
    and offsets are carried over.
    """
    import rasterio.shutil

    options = dict(COMPRESS="DEFLATE", LEVEL=6, BLOCKSIZE=512, BIGTIFF="IF_SAFER",
                   OVERVIEWS="AUTO" if overviews else "NONE",
                   OVERVIEW_RESAMPLING="MODE" if categorical else "AVERAGE",
                   STATISTICS="NO")
    if not categorical:
        options["PREDICTOR"] = "2"
    rasterio.shutil.copy(str(source), str(destination), driver="COG", strict=True, **options)


def write_qml(mask_path: Path, classes: Sequence[ClassInfo]) -> Path:
    """Write ``<mask>.qml``: a QGIS paletted style with the class names as legend labels
    (``contract.mask_qml``), replacing one that is there."""
    path = mask_path.with_suffix(".qml")
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(mask_qml(classes), encoding="utf-8")
    return path
