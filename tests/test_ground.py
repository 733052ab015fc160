"""Metres per pixel (``glnet.raster.ground.ground_pixel_size``) against geodesic distances on the
WGS 84 ellipsoid: projected grids in metres and US survey feet, and degrees at the equator
and at 60 degrees north; real rasters of the shared data where they are here."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.warp import transform as warp_transform

from glnet.raster.ground import ground_of, ground_pixel_size

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
TOLERANCE = 0.005
# Pixels between the two points measured: far enough apart for the distance to
# be exact to well under the tolerance, near enough to be "at the centre".
SPAN = 10


def geodesic(lon1: float, lat1: float, lon2: float, lat2: float,
             a: float = 6378137.0, f: float = 1 / 298.257223563) -> float:
    """Distance in metres on the ellipsoid (Vincenty's inverse formula; pyproj is not a
    dependency)."""
    b = (1 - f) * a
    big_l = math.radians(lon2 - lon1)
    u1 = math.atan((1 - f) * math.tan(math.radians(lat1)))
    u2 = math.atan((1 - f) * math.tan(math.radians(lat2)))
    su1, cu1, su2, cu2 = math.sin(u1), math.cos(u1), math.sin(u2), math.cos(u2)
    lam = big_l
    for _ in range(200):
        sl, cl = math.sin(lam), math.cos(lam)
        ss = math.hypot(cu2 * sl, cu1 * su2 - su1 * cu2 * cl)
        if ss == 0:
            return 0.0
        cs = su1 * su2 + cu1 * cu2 * cl
        sigma = math.atan2(ss, cs)
        sa = cu1 * cu2 * sl / ss
        c2a = 1 - sa * sa
        c2sm = cs - 2 * su1 * su2 / c2a if c2a else 0.0
        c = f / 16 * c2a * (4 + f * (4 - 3 * c2a))
        previous = lam
        lam = big_l + (1 - c) * f * sa * (sigma + c * ss * (c2sm + c * cs * (-1 + 2 * c2sm ** 2)))
        if abs(lam - previous) < 1e-13:
            break
    uu = c2a * (a * a - b * b) / (b * b)
    big_a = 1 + uu / 16384 * (4096 + uu * (-768 + uu * (320 - 175 * uu)))
    big_b = uu / 1024 * (256 + uu * (-128 + uu * (74 - 47 * uu)))
    ds = big_b * ss * (c2sm + big_b / 4 * (cs * (-1 + 2 * c2sm ** 2) - big_b / 6 * c2sm
                                            * (-3 + 4 * ss ** 2) * (-3 + 4 * c2sm ** 2)))
    return b * big_a * (sigma - ds)


def measured(crs, transform, width: int, height: int) -> tuple[float, float]:
    """Metres per pixel along x and y at the grid's centre, from geodesic distances."""
    cx, cy = width / 2, height / 2
    pixels = [(cx - SPAN / 2, cy), (cx + SPAN / 2, cy), (cx, cy - SPAN / 2), (cx, cy + SPAN / 2)]
    xs, ys = zip(*(transform @ p for p in pixels))
    lons, lats = warp_transform(crs, "EPSG:4326", list(xs), list(ys))
    return (geodesic(lons[0], lats[0], lons[1], lats[1]) / SPAN,
            geodesic(lons[2], lats[2], lons[3], lats[3]) / SPAN)


def check(crs, transform, width: int, height: int) -> tuple[float, float]:
    got = ground_pixel_size(crs, transform, width, height)
    want = measured(crs, transform, width, height)
    assert got is not None
    for g, w in zip(got, want):
        assert abs(g - w) <= TOLERANCE * w, (got, want)
    # The vectorizer's pixel sizes are the same numbers.
    ground = ground_of(crs, transform, width, height)
    assert (ground.pixel_width, ground.pixel_height) == got
    return got


def test_projected_utm_metres():
    got = check(CRS.from_epsg(32633), Affine(0.5, 0, 500000, 0, -0.5, 4000000), 1000, 1000)
    assert got == (0.5, 0.5)


def test_projected_us_survey_feet():
    # NAD83 / California zone 5 (ftUS): 2 ft pixels are 0.6096 m.
    got = check(CRS.from_epsg(2229), Affine(2, 0, 6.5e6, 0, -2, 1.9e6), 1000, 1000)
    assert got == pytest.approx((2 * 1200 / 3937, 2 * 1200 / 3937), rel=1e-12)


@pytest.mark.parametrize("lat", [0.0, 60.0])
def test_geographic_degrees(lat):
    # 1e-4 degree pixels (about 11 m), the grid centred on ``lat``.
    size = 512
    t = Affine(1e-4, 0, 10.0, 0, -1e-4, lat + size / 2 * 1e-4)
    x, y = check(CRS.from_epsg(4326), t, size, size)
    # A degree pixel is square on the ground at the equator only (there, to 0.7 %,
    # the ellipsoid's flattening); at 60 degrees north it is about half as wide.
    assert x / y == pytest.approx(math.cos(math.radians(lat)), rel=0.01)


def test_no_crs():
    assert ground_pixel_size(None, Affine.identity(), 10, 10) is None


@pytest.mark.parametrize("path", [
    "spacenet-atlanta-buildings/sample_geotiff.tif",    # UTM 16N, 0.5 m
    "sen1floods11/Spain_7370579_S2Hand.tif",            # EPSG:4326, Sentinel-2 at 40 N
    "landsat7-rgb-byte/RGB.byte.tif",                   # UTM 18N, 300 m
])
def test_real_rasters(path):
    if not (REAL / path).exists():
        pytest.skip(f"{REAL / path} not here")
    with rasterio.open(REAL / path) as ds:
        check(ds.crs, ds.transform, ds.width, ds.height)
