"""Where a raster grid lies and how it measures on the ground.

A grid is a CRS (a rasterio ``CRS`` or None) and an affine transform from
pixel (column, row) to CRS coordinates. This module compares and names CRSs,
gives the transform of a window of a grid, and measures the grid in metres:

``ground_pixel_size``
    metres per pixel along the grid's columns (x) and rows (y). Projected
    CRS: the pixel's sides in the CRS's linear unit times metres per unit
    (so US survey feet and international feet come out in metres).
    Geographic CRS: the sides in degrees (or the CRS's angular unit) times the
    ellipsoid's radii of curvature at the grid's centre latitude, on the
    CRS's own ellipsoid: east-west by the prime-vertical radius times the
    cosine of the latitude, north-south by the meridional radius.
``ground_of`` and ``measure``
    the same, plus pixel areas, and areas and perimeters of polygons in pixel
    coordinates (on the ellipsoid for a geographic CRS, exactly, through its
    cylindrical equal-area projection).

Nothing here imports torch; rasterio and shapely are imported where used.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

WGS84 = (6378137.0, 1 / 298.257223563)
# Latitudes closer to a pole than this are taken at it: a pixel's east-west size
# there tends to zero, and callers divide by it.
_MAX_LATITUDE = 89.9


# --------------------------------------------------------------------------- CRSs and windows

def same_crs(wkt: str, crs) -> bool:
    """Whether the CRS written as ``wkt`` (or any user input) is ``crs``; False if unreadable."""
    from rasterio.crs import CRS

    try:
        return CRS.from_user_input(wkt) == crs
    except Exception:  # noqa: BLE001 - rasterio raises several types for unreadable CRSs
        return False


def describe_crs(crs) -> str:
    """A CRS in a few words for messages: ``EPSG:32633``, "a custom CRS" or "no CRS"."""
    if crs is None:
        return "no CRS"
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else "a custom CRS"


def window_transform(transform, col_off: float, row_off: float, scale_x: float = 1.0,
                     scale_y: float = 1.0):
    """The transform of a window of a grid whose corner is pixel (``col_off``, ``row_off``),
    its pixels ``scale_x`` by ``scale_y`` of the grid's (a window read into another shape)."""
    from affine import Affine

    t = transform
    # (Explicit arithmetic: affine 3 deprecates the * operator rasterio.windows uses.)
    return Affine(t.a * scale_x, t.b * scale_y, t.c + col_off * t.a + row_off * t.b,
                  t.d * scale_x, t.e * scale_y, t.f + col_off * t.d + row_off * t.e)


# --------------------------------------------------------------------------- units

def linear_unit(crs) -> float | None:
    """Metres per unit of a projected CRS (0.3048006096 for US survey feet), None if unknown."""
    try:
        return float(crs.linear_units_factor[1])
    except Exception:  # noqa: BLE001 - a projected CRS rasterio cannot describe
        return None


def angular_unit(crs) -> float:
    """Radians per unit of a geographic CRS (degrees unless it says otherwise)."""
    try:
        return float(crs.units_factor[1])
    except Exception:  # noqa: BLE001 - a geographic CRS rasterio cannot describe
        return math.pi / 180


def ellipsoid(crs) -> tuple[float, float]:
    """Semi-major axis and flattening of a CRS's ellipsoid (WGS 84 if unknown)."""
    match = re.search(r'(?:ELLIPSOID|SPHEROID)\["[^"]*",\s*([-+0-9.eE]+),\s*([-+0-9.eE]+)',
                      crs.to_wkt())
    if not match:
        return WGS84
    a, inv_f = float(match.group(1)), float(match.group(2))
    return a, (1 / inv_f if inv_f else 0.0)


def radii(phi: np.ndarray, a: float, f: float) -> tuple[np.ndarray, np.ndarray]:
    """Meridional (M) and prime-vertical (N) radii of curvature at latitudes ``phi`` (radians)."""
    e2 = f * (2 - f)
    w2 = 1 - e2 * np.sin(phi) ** 2
    return a * (1 - e2) / w2 ** 1.5, a / np.sqrt(w2)


def _apply(t, col: float, row: float) -> tuple[float, float]:
    """Map a pixel position through an affine transform."""
    return t.c + t.a * col + t.b * row, t.f + t.d * col + t.e * row


def _geographic_scale(crs, transform, width: int, height: int) -> tuple[float, float]:
    """Metres per CRS unit eastward and northward at the centre of a geographic grid."""
    unit = angular_unit(crs)
    a, f = ellipsoid(crs)
    phi = _apply(transform, width / 2, height / 2)[1] * unit
    limit = math.radians(_MAX_LATITUDE)
    phi = max(-limit, min(limit, phi))
    m, n = radii(np.array(phi), a, f)
    return float(n) * math.cos(phi) * unit, float(m) * unit


def ground_pixel_size(crs, transform, width: int, height: int) -> tuple[float, float] | None:
    """Metres per pixel along the columns (x) and the rows (y) of a grid of ``width`` by
    ``height`` pixels with ``crs`` and ``transform``.

    A geographic CRS is measured at the grid's centre latitude on its
    ellipsoid (see the module's docstring); a rotated grid's pixel sides are
    measured along the grid. None without a CRS, or with a projected CRS whose
    linear unit rasterio cannot tell.
    """
    if crs is None:
        return None
    t = transform
    if crs.is_geographic:
        east, north = _geographic_scale(crs, t, width, height)
        return math.hypot(t.a * east, t.d * north), math.hypot(t.b * east, t.e * north)
    unit = linear_unit(crs)
    if unit is None:
        return None
    return math.hypot(t.a, t.d) * unit, math.hypot(t.b, t.e) * unit


# --------------------------------------------------------------------------- areas and lengths

@dataclass(frozen=True)
class Ground:
    """How a raster's pixel grid measures on the ground.

    ``kind`` is "projected", "geographic" or "none" (no CRS). ``unit`` is
    metres per CRS unit (projected), radians per CRS unit (geographic) or 1.
    Pixel sizes are ``ground_pixel_size``'s (CRS units without a CRS, or with
    a projected CRS of unknown unit).
    """

    kind: str
    transform: object
    unit: float
    a: float
    f: float
    pixel_width: float
    pixel_height: float
    pixel_area: float


def ground_of(crs, transform, width: int, height: int) -> Ground:
    """The ``Ground`` of a raster grid with ``crs`` (rasterio CRS or None) and ``transform``."""
    t = transform
    det = abs(t.a * t.e - t.b * t.d)
    if crs is None:
        return Ground("none", t, 1.0, *WGS84, math.hypot(t.a, t.d), math.hypot(t.b, t.e), det)
    if crs.is_geographic:
        unit = angular_unit(crs)
        a, f = ellipsoid(crs)
        pw, ph = ground_pixel_size(crs, t, width, height)
        x0, y0 = _apply(t, width // 2, height // 2)
        x1, y1 = _apply(t, width // 2 + 1, height // 2 + 1)
        if t.b == 0 and t.d == 0:
            xs, ys = authalic(np.array([x0, x1, x1, x0]) * unit, np.array([y0, y0, y1, y1]) * unit,
                              a, f)
            area = abs(_shoelace(xs, ys))
        else:
            east, north = _geographic_scale(crs, t, width, height)
            area = det * east * north
        return Ground("geographic", t, unit, a, f, pw, ph, area)
    unit = linear_unit(crs) or 1.0
    pw, ph = ground_pixel_size(crs, t, width, height) or (math.hypot(t.a, t.d), math.hypot(t.b, t.e))
    return Ground("projected", t, unit, *WGS84, pw, ph, det * unit * unit)


def authalic(lam: np.ndarray, phi: np.ndarray, a: float, f: float):
    """Cylindrical equal-area coordinates (metres) of longitudes and latitudes in radians.

    x = a lambda, y = a q(phi) / 2 with q the authalic function: the area of
    any region equals its ellipsoidal area (the projection of EPSG:6933 with
    unit scale on the equator).
    """
    e2 = f * (2 - f)
    s = np.sin(phi)
    if e2 == 0:
        q = 2 * s
    else:
        e = math.sqrt(e2)
        q = (1 - e2) * (s / (1 - e2 * s * s) - np.log((1 - e * s) / (1 + e * s)) / (2 * e))
    return a * lam, a * q / 2


def _shoelace(x: np.ndarray, y: np.ndarray) -> float:
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def to_world(pixel_geoms: np.ndarray, transform) -> np.ndarray:
    """Geometries in pixel coordinates (column, row) mapped through an affine ``transform``."""
    import shapely

    t = transform
    matrix = np.array([[t.a, t.d], [t.b, t.e]])
    offset = np.array([t.c, t.f])
    return shapely.transform(pixel_geoms, lambda xy: xy @ matrix + offset)


def measure(pixel_geoms: np.ndarray, ground: Ground) -> tuple[np.ndarray, np.ndarray]:
    """``(area_m2, perimeter_m)`` of polygons given in pixel coordinates (NaN without a CRS)."""
    import shapely

    n = len(pixel_geoms)
    if ground.kind == "none" or n == 0:
        return np.full(n, np.nan), np.full(n, np.nan)
    t = ground.transform
    if ground.kind == "projected":
        det = abs(t.a * t.e - t.b * t.d)
        area = shapely.area(pixel_geoms) * det * ground.unit ** 2
        perimeter = shapely.length(to_world(pixel_geoms, t)) * ground.unit
        return area, perimeter
    world = to_world(pixel_geoms, t)
    u, a, f = ground.unit, ground.a, ground.f
    equal_area = shapely.transform(
        world, lambda xy: np.column_stack(authalic(xy[:, 0] * u, xy[:, 1] * u, a, f)))
    area = shapely.area(equal_area)
    rings, ring_owner = shapely.get_rings(world, return_index=True)
    coords, ring_of = shapely.get_coordinates(rings, return_index=True)
    lam, phi = coords[:, 0] * u, coords[:, 1] * u
    same = ring_of[1:] == ring_of[:-1]
    mid = ((phi[1:] + phi[:-1]) / 2)[same]
    m, nn = radii(mid, a, f)
    seg = np.hypot(nn * np.cos(mid) * np.diff(lam)[same], m * np.diff(phi)[same])
    ring_len = np.bincount(ring_of[1:][same], seg, minlength=len(rings))
    perimeter = np.bincount(ring_owner, ring_len, minlength=n)
    return area, perimeter
