"""Polygons from masks (glnet.vectorize.polygons, ``glnet vectorize``) on real files.

Masks are real GeoTIFFs written with rasterio; outputs are read back with
fiona; ``gdal_polygonize.py`` (the system GDAL's) is the reference for the
exact polygons. The SpaceNet building mask is real data.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path

import fiona
import numpy as np
import pytest
import rasterio
import shapely
from rasterio import Affine
from shapely.geometry import shape

from glnet.config import VectorizeOptions
from glnet.errors import Cancelled, GlnetError
from glnet.modelfile import ClassInfo
from glnet.vectorize.output import FIELDS
from glnet.vectorize.polygons import vectorize
from glnet.vectorize.simplify import smooth_coverage
from glnet.vectorize.styles import read_layer_style

GDAL_POLYGONIZE = Path("/usr/bin/gdal_polygonize.py")
SPACENET = Path("/work/shared/data/real/spacenet-atlanta-buildings")
GLNET = [str(Path(sys.executable).with_name("glnet"))]
UTM = "EPSG:32616"
CLASSES = [ClassInfo(0, "water", (31, 120, 180)), ClassInfo(1, "forest", (51, 160, 44)),
           ClassInfo(2, "built-up", (227, 26, 28)), ClassInfo(3, "bare <soil> & rock", (200, 180, 120))]


def from_origin(west: float, north: float, xsize: float, ysize: float) -> Affine:
    return Affine(xsize, 0.0, west, 0.0, -ysize, north)


def write_mask(path: Path, data: np.ndarray, crs=UTM, transform=None, nodata=255,
               classes=None, dtype=None) -> Path:
    transform = transform if transform is not None else from_origin(733601, 3725139, 0.5, 0.5)
    profile = dict(driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                   dtype=dtype or data.dtype, nodata=nodata, transform=transform,
                   tiled=True, blockxsize=256, blockysize=256)
    if crs is not None:
        profile["crs"] = crs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rasterio's NotGeoreferencedWarning
        with rasterio.open(path, "w", **profile) as ds:
            ds.write(data, 1)
            if classes:
                ds.update_tags(GLNET_CLASSES=json.dumps(
                    [{"value": c.value, "name": c.name, "color": list(c.color)} for c in classes]))
                ds.write_colormap(1, {c.value: (*c.color, 255) for c in classes})
    return path


def blob_mask(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Land-cover-like classes 0..3: smooth regions, ragged borders, speckle, holes, nodata."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    phase = rng.uniform(0, 6, 4)
    field = (np.sin(xx / 31 + phase[0]) + np.sin(yy / 23 + phase[1])
             + 0.7 * np.sin((xx + yy) / 11 + phase[2]) + rng.random((h, w)) * 0.8)
    mask = np.digitize(field, [-0.8, 0.3, 1.2]).astype(np.uint8)
    mask[rng.random((h, w)) < 0.002] = 255                     # nodata specks
    mask[h // 2:h // 2 + 12, : w // 3] = 255                  # a nodata band from the border
    mask[10:40, 10:40] = 1          # a ring of class 1 around class 2: a hole
    mask[18:32, 18:32] = 2
    return mask


def read(path: Path, layer: str | None = None) -> tuple[list[dict], list]:
    with fiona.open(path, layer=layer) as src:
        feats = [(dict(f["properties"]), shape(f["geometry"])) for f in src]
    return [p for p, _ in feats], np.array([g for _, g in feats], dtype=object)


def gdal_polygonize(mask: Path, out: Path) -> tuple[np.ndarray, np.ndarray]:
    subprocess.run(["/usr/bin/python3", str(GDAL_POLYGONIZE), "-q", str(mask), "-f", "GPKG",
                    str(out), "polygons", "DN"], check=True, capture_output=True, timeout=120)
    props, geoms = read(out)
    return np.array([p["DN"] for p in props]), geoms


def assert_same_polygons(values_a, geoms_a, values_b, geoms_b) -> None:
    """Same number of polygons, and each of ``a`` equals (topologically) one of ``b``."""
    assert len(geoms_a) == len(geoms_b)
    tree = shapely.STRtree(geoms_b)
    i, j = tree.query(shapely.point_on_surface(geoms_a), predicate="within")
    assert np.array_equal(np.sort(i), np.arange(len(geoms_a)))  # each point in exactly one
    assert np.array_equal(np.asarray(values_a)[i], np.asarray(values_b)[j])
    assert shapely.equals(geoms_a[i], geoms_b[j]).all()


def values_of(props) -> np.ndarray:
    return np.array([p["class_id"] for p in props])


@pytest.fixture(scope="module")
def blobs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("blobs")
    return write_mask(folder / "mask.tif", blob_mask(300, 420), classes=CLASSES)


# --------------------------------------------------------------------------- exact polygons

@pytest.mark.skipif(not GDAL_POLYGONIZE.exists(), reason="needs the system GDAL's gdal_polygonize.py")
def test_exact_polygons_equal_gdal_polygonize_and_pixel_areas(blobs, tmp_path):
    out = tmp_path / "p.gpkg"
    result = vectorize(blobs, out, VectorizeOptions(block_size=64))
    props, geoms = read(out)
    values = values_of(props)
    ref_values, ref_geoms = gdal_polygonize(blobs, tmp_path / "gdal.gpkg")
    assert_same_polygons(values, geoms, ref_values, ref_geoms)
    with rasterio.open(blobs) as ds:
        data = ds.read(1)
    pixel_area = 0.25
    for c in range(4):
        expected = (data == c).sum() * pixel_area
        ours = np.array([p["area_m2"] for p in props if p["class_id"] == c])
        assert abs(ours.sum() - expected) / expected < 1e-6
        assert np.allclose(np.sort(ours), np.sort(shapely.area(ref_geoms[ref_values == c])),
                           rtol=1e-9)
        assert (values == c).sum() == (ref_values == c).sum()
    assert 255 not in values  # nodata makes no polygons
    assert result.features == len(geoms) and result.counts[1] == (values == 1).sum()
    assert all(shapely.is_valid(geoms))
    # the ring of class 1 keeps the class-2 square as an interior ring
    ring = [g for v, g in zip(values, geoms) if v == 2 and
            g.equals(shapely.box(733601 + 9, 3725139 - 16, 733601 + 16, 3725139 - 9))]
    assert ring
    shells = shapely.polygons(shapely.get_exterior_ring(geoms))
    holder = geoms[(values == 1) & shapely.contains(shells, ring[0])]
    assert len(holder) == 1 and len(holder[0].interiors) >= 1
    # perimeter: planar, in metres
    square = props[[i for i, g in enumerate(geoms) if g.equals(ring[0])][0]]
    assert math.isclose(square["perimeter_m"], 4 * 7, rel_tol=1e-12)
    assert square["class_name"] == "built-up"


def test_block_size_does_not_change_the_polygons(blobs, tmp_path):
    whole = tmp_path / "whole.gpkg"
    vectorize(blobs, whole, VectorizeOptions(block_size=0))
    props_w, geoms_w = read(whole)
    for block in (256, 37):
        out = tmp_path / f"b{block}.gpkg"
        vectorize(blobs, out, VectorizeOptions(block_size=block))
        props, geoms = read(out)
        assert_same_polygons(values_of(props), geoms, values_of(props_w), geoms_w)
        assert np.allclose(sorted(p["area_m2"] for p in props),
                           sorted(p["area_m2"] for p in props_w), rtol=1e-12)


def test_real_spacenet_building_mask(tmp_path):
    """The SpaceNet 4 Atlanta footprint mask, georeferenced with its image's grid."""
    src_mask = SPACENET / "sample_fp_mask_from_geojson.tif"
    image = SPACENET / "sample_geotiff.tif"
    if not (src_mask.exists() and image.exists()):
        pytest.skip("SpaceNet sample data not available")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(src_mask) as m:
            raw = m.read(1)
    with rasterio.open(image) as img:
        crs, transform = img.crs, img.transform
    data = (raw == 255).astype(np.uint8)  # 0 background, 1 building
    mask = write_mask(tmp_path / "buildings.tif", data, crs=crs, transform=transform,
                      classes=[ClassInfo(0, "background", (230, 230, 230)),
                               ClassInfo(1, "building", (227, 26, 28))])
    out = tmp_path / "buildings.gpkg"
    vectorize(mask, out, VectorizeOptions(block_size=128, class_ids=(1,)))
    props, geoms = read(out)
    assert {p["class_name"] for p in props} == {"building"}
    with fiona.open(out) as layer:
        assert rasterio.crs.CRS.from_user_input(layer.crs_wkt) == crs
    assert abs(sum(p["area_m2"] for p in props) - data.sum() * 0.25) < 1e-6 * data.sum()
    # the buildings sit on the labelled footprints
    with fiona.open(SPACENET / "geotiff_labels.geojson") as labels:
        footprints = shapely.union_all([shape(f["geometry"]) for f in labels])
    inside = shapely.area(shapely.intersection(shapely.union_all(geoms), footprints))
    assert inside / shapely.area(shapely.union_all(geoms)) > 0.9
    if GDAL_POLYGONIZE.exists():
        ref_values, ref_geoms = gdal_polygonize(mask, tmp_path / "gdal.gpkg")
        assert_same_polygons(values_of(props), geoms, ref_values[ref_values == 1],
                             ref_geoms[ref_values == 1])


# --------------------------------------------------------------------------- simplification

def valid_region(mask: Path):
    """The mask's valid (non-nodata) pixels as one geometry."""
    from rasterio.features import shapes

    with rasterio.open(mask) as ds:
        valid = ds.read_masks(1) != 0
        parts = [shape(g) for g, _ in shapes(valid.astype(np.uint8), mask=valid,
                                             transform=ds.transform)]
    return shapely.union_all(parts)


def _assert_clean_coverage(geoms: np.ndarray, region, pairwise: bool = True) -> None:
    """Valid polygons, no overlaps, and together exactly ``region`` (no gaps)."""
    assert shapely.is_valid(geoms).all()
    assert (shapely.get_type_id(geoms) == 3).all()  # polygons
    union = shapely.union_all(geoms)
    total = shapely.area(geoms).sum()
    # overlaps would make the areas add up to more than the union
    assert total - union.area <= 1e-9 * total
    if pairwise:
        left, right = shapely.STRtree(geoms).query(geoms, predicate="intersects")
        pair = left < right
        overlap = shapely.area(shapely.intersection(geoms[left[pair]], geoms[right[pair]]))
        assert (overlap <= 1e-6 * np.minimum(shapely.area(geoms[left[pair]]),
                                             shapely.area(geoms[right[pair]]))).all()
    # no gaps: the union covers exactly the valid pixels
    assert abs(union.area - region.area) < 1e-9 * region.area
    assert shapely.symmetric_difference(union, region).area < 1e-9 * region.area


@pytest.mark.parametrize("smooth", [0, 2])
def test_simplified_polygons_form_a_clean_coverage(blobs, tmp_path, smooth):
    exact = tmp_path / "exact.gpkg"
    vectorize(blobs, exact, VectorizeOptions(block_size=0))
    props_e, geoms_e = read(exact)
    out = tmp_path / "simple.gpkg"
    vectorize(blobs, out, VectorizeOptions(simplify=1.5, smooth=smooth, block_size=64,
                                           min_pixels=6))
    props, geoms = read(out)
    _assert_clean_coverage(geoms, valid_region(blobs))
    # fewer vertices than the pixel outlines, same class areas within the tolerance's effect
    assert shapely.get_num_coordinates(geoms).sum() < 0.5 * shapely.get_num_coordinates(geoms_e).sum()
    for c in range(4):
        a = sum(p["area_m2"] for p in props if p["class_id"] == c)
        e = sum(p["area_m2"] for p in props_e if p["class_id"] == c)
        assert abs(a - e) < 0.05 * e


def test_simplified_whole_mask_and_strips_are_both_clean(blobs, tmp_path):
    region = valid_region(blobs)
    areas = []
    for block in (0, 100):
        out = tmp_path / f"s{block}.gpkg"
        vectorize(blobs, out, VectorizeOptions(simplify=2.0, block_size=block))
        props, geoms = read(out)
        _assert_clean_coverage(geoms, region, pairwise=False)
        areas.append(sum(p["area_m2"] for p in props if p["class_id"] == 1))
    assert abs(areas[0] - areas[1]) < 0.01 * areas[0]


def test_smoothing_keeps_shared_edges_shared():
    # four squares meeting at a point, in a staircase: smoothing must not open gaps
    cells = [shapely.box(0, 0, 5, 5), shapely.box(5, 0, 10, 5), shapely.box(0, 5, 5, 10),
             shapely.box(5, 5, 10, 10)]
    stair = shapely.Polygon([(0, 0), (4, 0), (4, 1), (3, 1), (3, 2), (2, 2), (2, 3), (1, 3),
                             (1, 4), (0, 4)])
    polys = np.array([shapely.difference(cells[0], stair), stair, *cells[1:]], dtype=object)
    polys = shapely.segmentize(polys, 1.0)
    out = smooth_coverage(polys, 3)
    assert shapely.is_valid(out).all()
    assert math.isclose(shapely.union_all(out).area, 100.0, rel_tol=1e-12)
    assert math.isclose(shapely.area(out).sum(), 100.0, rel_tol=1e-12)
    assert shapely.get_num_coordinates(out[1]) > shapely.get_num_coordinates(stair)  # smoothed
    assert shapely.equals(out[2:], polys[2:]).all()  # straight edges stay put
    assert shapely.equals(shapely.union_all(out).exterior, shapely.box(0, 0, 10, 10).exterior)


# --------------------------------------------------------------------------- sieve

def test_sieve_in_pixels_and_square_metres(blobs, tmp_path):
    with rasterio.open(blobs) as ds:
        data = ds.read(1)
    valid_area = (data != 255).sum() * 0.25
    out = tmp_path / "sieved.gpkg"
    result = vectorize(blobs, out, VectorizeOptions(min_pixels=20))
    assert result.sieve_pixels == 20
    props, geoms = read(out)
    areas = np.array([p["area_m2"] for p in props])
    assert abs(areas.sum() - valid_area) < 1e-6 * valid_area  # nodata neither grows nor shrinks
    # regions under 20 px remain only where no valid 4-neighbour exists (inside nodata)
    small = geoms[areas < 20 * 0.25]
    touching = shapely.STRtree(geoms).query(small, predicate="touches")
    for k in range(len(small)):
        neighbours = geoms[touching[1][touching[0] == k]]
        assert all(shapely.length(shapely.intersection(small[k], n)) == 0 for n in neighbours)
    exact_count = vectorize(blobs, tmp_path / "e.gpkg").features
    assert len(props) < exact_count / 3
    # 5 m² with 0.25 m² pixels is the same threshold
    out2 = tmp_path / "sieved_m2.gpkg"
    assert vectorize(blobs, out2, VectorizeOptions(min_area=5.0)).sieve_pixels == 20
    assert_same_polygons(values_of(props), geoms, values_of(read(out2)[0]), read(out2)[1])


# --------------------------------------------------------------------------- ground measures

def _ellipsoid_cell_area(lat0: float, lat1: float, dlon: float) -> float:
    """Area of a latitude-longitude cell on WGS 84 by numerical integration."""
    a, f = 6378137.0, 1 / 298.257223563
    e2 = f * (2 - f)
    phi = np.radians(np.linspace(lat0, lat1, 200001))
    integrand = a * a * (1 - e2) * np.cos(phi) / (1 - e2 * np.sin(phi) ** 2) ** 2
    return float(np.trapezoid(integrand, phi)) * math.radians(dlon)


@pytest.mark.parametrize("lat0", [0.0, 59.5])
def test_geographic_areas_on_the_ellipsoid(tmp_path, lat0):
    data = np.zeros((100, 100), np.uint8)
    data[:, 50:] = 1
    mask = write_mask(tmp_path / "geo.tif", data, crs="EPSG:4326",
                      transform=from_origin(10.0, lat0 + 1.0, 0.01, 0.01))
    out = tmp_path / "geo.gpkg"
    vectorize(mask, out, VectorizeOptions(block_size=30))
    props, _ = read(out)
    total = sum(p["area_m2"] for p in props)
    assert abs(total - _ellipsoid_cell_area(lat0, lat0 + 1, 1.0)) < 1e-6 * total
    if lat0 == 0.0:
        # published: 1 deg x 1 deg at the equator; a sphere of the authalic radius
        # (6371007.2 m) gives 12,363.8 km^2, the ellipsoid 0.45 % less
        assert abs(total / 1e6 - 12363.8) < 0.005 * 12363.8
        # perimeter of the west half-cell: meridian arc 0-1 deg (110,574 m), two
        # parallels of 0.5 deg (55,659.7 m at the equator, 55,651.3 m at 1 deg N)
        west = [p for p in props if p["class_id"] == 0][0]
        assert abs(west["perimeter_m"] - (2 * 110574.3 + 55659.7 + 55651.3)) < 2.0


def test_projected_crs_in_us_feet(tmp_path):
    data = np.ones((20, 30), np.uint8)
    mask = write_mask(tmp_path / "ft.tif", data, crs="EPSG:2263",
                      transform=from_origin(1000000, 200000, 3.0, 3.0))
    out = tmp_path / "ft.gpkg"
    vectorize(mask, out)
    (props,) = read(out)[0]
    foot = 0.30480060960121924
    assert math.isclose(props["area_m2"], 600 * (3 * foot) ** 2, rel_tol=1e-9)
    assert math.isclose(props["perimeter_m"], 2 * (60 + 90) * foot, rel_tol=1e-9)


# --------------------------------------------------------------------------- formats and style

@pytest.mark.parametrize("name", ["p.gpkg", "p.shp", "p.geojson", "p.fgb"])
def test_formats_keep_crs_and_attributes(blobs, tmp_path, name):
    out = tmp_path / name
    result = vectorize(blobs, out, VectorizeOptions(min_pixels=10))
    with fiona.open(out) as layer:
        assert rasterio.crs.CRS.from_user_input(layer.crs_wkt).to_epsg() == 32616
        fields = list(layer.schema["properties"])
        assert len(layer) == result.features > 0
        first = next(iter(layer))
    expected = list(FIELDS) if name != "p.shp" else ["class_id", "class_name", "area_m2", "perim_m"]
    assert fields == expected
    assert first["properties"]["class_name"] in {c.name for c in CLASSES}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_geopackage_carries_a_categorised_qgis_style(blobs, tmp_path):
    out = tmp_path / "landcover.gpkg"
    vectorize(blobs, out)
    assert "layer_styles" in fiona.listlayers(out)
    qml = read_layer_style(out, "landcover")
    assert 'type="categorizedSymbol"' in qml and 'attr="class_id"' in qml
    for c in CLASSES:
        assert f'value="{",".join(map(str, c.color))},255"' in qml
    assert "bare &lt;soil&gt; &amp; rock" in qml
    con = sqlite3.connect(out)
    try:
        kind = con.execute("SELECT data_type FROM gpkg_contents WHERE table_name = "
                           "'layer_styles'").fetchone()
        default = con.execute("SELECT useAsDefault, f_geometry_column FROM layer_styles").fetchone()
        check = con.execute("PRAGMA integrity_check").fetchone()
    finally:
        con.close()
    assert kind == ("attributes",) and default == (1, "geom") and check == ("ok",)


def test_class_names_from_caller_colour_table_or_defaults(tmp_path):
    data = np.array([[0, 1], [2, 2]], np.uint8).repeat(5, 0).repeat(5, 1)
    plain = write_mask(tmp_path / "plain.tif", data)
    out = tmp_path / "plain.gpkg"
    vectorize(plain, out)
    assert {p["class_name"] for p in read(out)[0]} == {"class 0", "class 1", "class 2"}
    out2 = tmp_path / "named.gpkg"
    vectorize(plain, out2, classes=[ClassInfo(1, "forest", (0, 128, 0))])
    names = {p["class_id"]: p["class_name"] for p in read(out2)[0]}
    assert names == {0: "class 0", 1: "forest", 2: "class 2"}
    assert 'value="0,128,0,255"' in read_layer_style(out2, "named")


@pytest.mark.qgis
def test_qgis_applies_the_style_on_load(blobs, tmp_path):
    qgis_python = Path("/usr/bin/python3")
    if not Path("/usr/bin/qgis_process.bin").exists():
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but QGIS is missing", pytrace=False)
        pytest.skip("QGIS is not installed")
    out = tmp_path / "landcover.gpkg"
    vectorize(blobs, out)
    script = f"""
import os
import sys
from qgis.core import QgsApplication, QgsVectorLayer
app = QgsApplication([], False)
app.initQgis()
layer = QgsVectorLayer({str(out)!r} + "|layername=landcover", "lc", "ogr")
assert layer.isValid()
r = layer.renderer()
print(r.type(), r.classAttribute())
for cat in r.categories():
    print(cat.value(), cat.label(), cat.symbol().color().name())
sys.stdout.flush()
os._exit(0)  # QGIS 3.22 may crash in exitQgis() without a GUI
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QGIS_", "PYTHON"))}
    env.update(HOME=str(tmp_path), QT_QPA_PLATFORM="offscreen",
               XDG_RUNTIME_DIR=str(tmp_path / "run"))
    (tmp_path / "run").mkdir(mode=0o700)
    res = subprocess.run([str(qgis_python), "-c", script], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.split("\n")
    assert lines[0] == "categorizedSymbol class_id"
    for c in CLASSES:
        hexcolor = "#{:02x}{:02x}{:02x}".format(*c.color)
        assert f"{c.value} {c.name} {hexcolor}" in lines


# --------------------------------------------------------------------------- bad inputs

def test_float_raster_is_refused(tmp_path):
    mask = write_mask(tmp_path / "probs.tif", np.random.default_rng(0).random((20, 20)).astype(
        np.float32), nodata=None)
    with pytest.raises(GlnetError, match=r"probs\.tif: is a float32 raster; .*class raster"):
        vectorize(mask, tmp_path / "p.gpkg")
    assert not (tmp_path / "p.gpkg").exists()


def test_multiband_raster_is_refused(tmp_path):
    path = tmp_path / "rgb.tif"
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=3, dtype="uint8",
                       crs=UTM, transform=from_origin(0, 8, 1, 1)) as ds:
        ds.write(np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(GlnetError, match="has 3 bands"):
        vectorize(path, tmp_path / "p.gpkg")


def test_mask_without_crs_works_in_pixels_with_a_warning(tmp_path):
    data = np.zeros((10, 12), np.uint8)
    data[2:5, 3:9] = 1
    mask = write_mask(tmp_path / "nocrs.tif", data, crs=None, transform=Affine.identity())
    out = tmp_path / "nocrs.gpkg"
    with pytest.warns(UserWarning, match="has no CRS"):
        result = vectorize(mask, out, VectorizeOptions(min_area=2))  # in pixels here
    assert result.sieve_pixels == 2
    props, geoms = read(out)
    with fiona.open(out) as layer:
        assert not layer.crs_wkt
    one = [g for p, g in zip(props, geoms) if p["class_id"] == 1][0]
    assert one.equals(shapely.box(3, 2, 9, 5))  # pixel coordinates (rows down)
    assert all(p["area_m2"] is None and p["perimeter_m"] is None for p in props)


@pytest.mark.parametrize("name", ["empty.gpkg", "empty.shp", "empty.geojson", "empty.fgb"])
def test_empty_mask_gives_an_empty_layer_with_the_full_schema(tmp_path, name):
    mask = write_mask(tmp_path / "empty.tif", np.full((16, 16), 255, np.uint8))
    out = tmp_path / name
    result = vectorize(mask, out)
    assert result.features == 0
    with fiona.open(out) as layer:
        assert list(layer) == []
        assert rasterio.crs.CRS.from_user_input(layer.crs_wkt).to_epsg() == 32616
        if name != "empty.geojson":  # GeoJSON has no schema: fields come from features
            assert len(layer.schema["properties"]) == 4
            assert layer.schema["geometry"] == "Polygon"


def test_existing_output_is_refused_unless_overwrite(blobs, tmp_path):
    out = tmp_path / "p.gpkg"
    out.write_text("precious")
    with pytest.raises(GlnetError, match="already exists"):
        vectorize(blobs, out)
    assert out.read_text() == "precious"
    vectorize(blobs, out, VectorizeOptions(overwrite=True, class_ids=(2,)))
    assert {p["class_id"] for p in read(out)[0]} == {2}
    shp = tmp_path / "p.shp"
    (tmp_path / "p.dbf").write_text("stale")
    with pytest.raises(GlnetError, match=r"p\.dbf: already exists"):
        vectorize(blobs, shp)


def test_cancelling_leaves_nothing(blobs, tmp_path):
    def progress(fraction, message=None):
        if fraction > 0.3:
            raise Cancelled("cancelled")

    out = tmp_path / "p.gpkg"
    with pytest.raises(Cancelled):
        vectorize(blobs, out, VectorizeOptions(block_size=32, min_pixels=4), progress=progress)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- CLI

def test_cli_vectorize(blobs, tmp_path):
    out = tmp_path / "cli.gpkg"
    cmd = [*GLNET, "vectorize", str(blobs), "-o", str(out), "--min-area", "3",
           "--simplify", "1", "--classes", "1,2", "--block-size", "100"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"wrote {out}: ") and "polygons" in res.stdout
    assert {p["class_id"] for p in read(out)[0]} == {1, 2}
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1
    assert again.stderr.strip().count("\n") == 0 and "already exists" in again.stderr
    bad = subprocess.run([*GLNET, "vectorize", str(blobs), "-o", str(tmp_path / "x.txt")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "cannot tell the format" in bad.stderr


def test_cli_warns_about_a_mask_without_crs(tmp_path):
    mask = write_mask(tmp_path / "nocrs.tif", np.ones((6, 6), np.uint8), crs=None,
                      transform=Affine.identity())
    res = subprocess.run([*GLNET, "vectorize", str(mask), "-o", str(tmp_path / "n.geojson")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "glnet vectorize: warning: " in res.stderr and "has no CRS" in res.stderr
