"""The mask as vectorizing reads it: opened and checked, sieved, read in strips.

``open_mask`` refuses what cannot be vectorized (several bands, float or
other unreadable value types) with a ``GlnetError``. ``sieve_to_file`` runs
GDAL's sieve filter (``rasterio.features.sieve``, 4-connected) once on the
whole mask, read from the file band and writing into a memory-mapped
temporary file, so its memory is GDAL's per-region table (about 24 bytes a
region) plus the OS's page cache, not an array of the mask. Nodata pixels are
masked: they never grow into classes nor swallow them. A region smaller than
the threshold takes the class of its largest neighbour. ``read_strips`` then
yields the (sieved or original) values and the validity of ``block`` rows at
a time, so no caller holds more than one strip.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from ..errors import GlnetError

# Integer types GDAL's sieve and polygonize read directly.
_DTYPES = ("uint8", "uint16", "int16", "int32")


def open_mask(path: str | Path):
    """Open a class raster with rasterio, refusing what cannot be vectorized (``GlnetError``)."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    path = Path(path)
    if not path.exists():
        raise GlnetError(f"{path}: mask not found")
    try:
        with warnings.catch_warnings():
            # a mask without georeferencing is reported by vectorize itself
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(path)
    except RasterioIOError as exc:
        raise GlnetError(f"{path}: not a raster GDAL can read ({exc})") from None
    problem = None
    dtype = ds.dtypes[0] if ds.count else None
    if ds.count != 1:
        problem = (f"has {ds.count} bands; vectorize needs a single-band class raster "
                   "(like the masks of glnet segment)")
    elif dtype.startswith(("float", "complex")):
        problem = (f"is a {dtype} raster; vectorize needs a class raster of integer class "
                   "values (like the masks of glnet segment), not probabilities or imagery")
    elif dtype not in _DTYPES:
        problem = (f"has {dtype} values; vectorize reads {', '.join(_DTYPES)} class rasters "
                   "(convert it, e.g. gdal_translate -ot Int32)")
    if problem:
        ds.close()
        raise GlnetError(f"{path}: {problem}")
    return ds


def has_geotransform(path: str | Path) -> bool:
    """Whether GDAL finds a geotransform, GCPs or RPCs in ``path`` (rasterio says identity
    either way; it warns when there is none)."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NotGeoreferencedWarning)
        with rasterio.open(path):
            pass
    return not any(issubclass(w.category, NotGeoreferencedWarning) for w in caught)


def _has_mask(ds) -> bool:
    from rasterio.enums import MaskFlags

    return ds.mask_flag_enums[0] != [MaskFlags.all_valid]


def sieve_to_file(ds, size: int, workdir: Path) -> tuple[Path, int]:
    """Sieve ``ds``'s band 1 into a raw file (row-major, the band's dtype) in ``workdir``.

    Returns the file and how many pixels the sieve changed.
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.features import sieve
    from rasterio.windows import Window

    h, w = ds.height, ds.width
    mask_band = None
    mask_ds = None
    try:
        if _has_mask(ds):
            # GDAL's sieve takes the validity mask as a band of its own: a 1-bit
            # per pixel temporary GeoTIFF (compressed), written strip by strip.
            mask_path = workdir / "valid.tif"
            profile = dict(driver="GTiff", width=w, height=h, count=1, dtype="uint8", nbits=1,
                           tiled=True, blockxsize=256, blockysize=256, compress="deflate",
                           zlevel=1, bigtiff="IF_SAFER")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(mask_path, "w", **profile) as out:
                    for r0 in range(0, h, 1024):
                        win = Window(0, r0, w, min(1024, h - r0))
                        out.write((ds.read_masks(1, window=win) != 0).astype(np.uint8), 1,
                                  window=win)
                mask_ds = rasterio.open(mask_path)
            mask_band = rasterio.band(mask_ds, 1)
        raw = workdir / "sieved.raw"
        out = np.memmap(raw, dtype=ds.dtypes[0], mode="w+", shape=(h, w))
        sieve(rasterio.band(ds, 1), min(size, h * w), out=out, mask=mask_band, connectivity=4)
        out.flush()
        changed = sum(int((ds.read(1, window=Window(0, r0, w, min(1024, h - r0)))
                           != out[r0:r0 + 1024]).sum()) for r0 in range(0, h, 1024))
        del out
    finally:
        if mask_ds is not None:
            mask_ds.close()
    return raw, changed


def read_strips(ds, block: int, sieved: Path | None
                ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(first row, values, valid)`` for each strip of ``block`` rows (all rows if 0)."""
    from rasterio.windows import Window

    h, w = ds.height, ds.width
    step = block or h
    dtype = np.dtype(ds.dtypes[0])
    with open(sieved, "rb") if sieved is not None else nullcontext() as raw:
        for r0 in range(0, h, step):
            rows = min(step, h - r0)
            win = Window(0, r0, w, rows)
            if raw is not None:
                raw.seek(r0 * w * dtype.itemsize)
                data = np.fromfile(raw, dtype=dtype, count=rows * w).reshape(rows, w)
            else:
                data = ds.read(1, window=win)
            valid = ds.read_masks(1, window=win) != 0
            yield r0, data, valid
