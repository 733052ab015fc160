"""The synthetic landscape: georeferencing, exact polygons, and the properties that make both
GLNet branches matter (agriculture and barren alike locally, different in shape; thin roads)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import fiona
import numpy as np
import pytest
import rasterio
from rasterio import features
from shapely.geometry import shape

from glnet import synth as S
from glnet.errors import GlnetError

GLNET = str(Path(sys.executable).with_name("glnet"))
SIZE = 1024


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "scene"
    result = S.synth(out, size=SIZE, seed=3)
    with rasterio.open(out / "scene.tif") as ds:
        image = ds.read().astype(np.float64)
    with rasterio.open(out / "labels.tif") as ds:
        labels = ds.read(1)
    return out, result, image, labels


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    p = np.pad(mask, r)
    h, w = mask.shape
    rows = np.zeros((h, w + 2 * r), dtype=bool)
    for k in range(2 * r + 1):
        rows |= p[k:k + h]
    out = np.zeros((h, w), dtype=bool)
    for k in range(2 * r + 1):
        out |= rows[:, k:k + w]
    return out


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    return ~_dilate(~mask, r)


def _box(a: np.ndarray, r: int) -> np.ndarray:
    """Sum of ``a`` over (2r+1)^2 windows, zero outside."""
    p = np.pad(a, ((r + 1, r), (r + 1, r))).cumsum(0).cumsum(1)
    k = 2 * r + 1
    return p[k:, k:] - p[:-k, k:] - p[k:, :-k] + p[:-k, :-k]


def _road_contrast(bright: np.ndarray, road: np.ndarray, r: int) -> np.ndarray:
    """z-scores of road pixels (or cells) against the non-road ones around them."""
    bg = (road == 0).astype(np.float64)
    n = _box(bg, r)
    mu = _box(bright * bg, r) / np.maximum(n, 1)
    sd = np.sqrt(np.maximum(_box(bright ** 2 * bg, r) / np.maximum(n, 1) - mu ** 2, 1e-6))
    sel = (road > 0) & (n > 10)
    return ((bright - mu) / sd)[sel]


def test_outputs_and_georeferencing(scene):
    out, result, image, labels = scene
    assert sorted(p.name for p in out.iterdir()) == sorted(S.OUTPUTS)
    with rasterio.open(out / "scene.tif") as img, rasterio.open(out / "labels.tif") as lab:
        assert img.crs.to_epsg() == 32633 and lab.crs == img.crs
        assert img.transform == lab.transform and img.res == (0.5, 0.5)
        assert (img.width, img.height, img.count) == (SIZE, SIZE, 3) and img.dtypes[0] == "uint8"
        assert img.nodata is None and img.profile["tiled"] and img.profile["compress"] == "deflate"
        assert img.descriptions == ("red", "green", "blue")
        # A plausible place: UTM 33N at 48 degrees north, origin on whole metres.
        assert 400_000 < img.transform.c < 600_000 and 5_200_000 < img.transform.f < 5_400_000
        assert img.transform.c == round(img.transform.c)
        assert lab.count == 1 and lab.dtypes[0] == "uint8" and lab.nodata == 255
        assert lab.profile["tiled"] and lab.profile["compress"] == "deflate"
        tag = json.loads(lab.tags()["GLNET_CLASSES"])
        assert tag == json.loads((out / "classes.json").read_text())
        assert [c["name"] for c in tag] == ["grassland", "agriculture", "barren", "forest", "water", "road"]
        cmap = lab.colormap(1)
        assert all(cmap[c["value"]][:3] == tuple(c["color"]) for c in tag)
    assert labels.max() <= 5 and result.polygon_count > 10


def test_polygons_rasterise_to_the_labels_exactly(scene):
    out, result, image, labels = scene
    with fiona.open(out / "labels.gpkg", layer="labels") as src:
        assert dict(src.schema["properties"]) == {"class_id": "int", "class_name": "str"}
        assert src.crs.to_epsg() == 32633
        shapes = [(f.geometry, f.properties["class_id"]) for f in src]
        names = {f.properties["class_id"]: f.properties["class_name"] for f in src}
    assert names == {c.value: c.name for c in S.CLASSES}
    with rasterio.open(out / "labels.tif") as ds:
        burnt = features.rasterize(shapes, out_shape=ds.shape, transform=ds.transform,
                                   fill=255, dtype="uint8", all_touched=False)
    assert np.array_equal(burnt, labels)
    assert len(shapes) == result.polygon_count


def test_class_fractions(scene):
    out, result, image, labels = scene
    share = np.bincount(labels.ravel(), minlength=6) / labels.size
    assert np.all(share > 0.01), share
    assert 0.005 <= share[S.ROAD] <= 0.05
    assert share[S.AGRICULTURE] > 0.05 and share[S.BARREN] > 0.05 and share[S.GRASSLAND] > 0.2
    assert result.class_fractions["road"] == pytest.approx(share[S.ROAD])


def test_agriculture_and_barren_are_painted_alike():
    # Relabelling every agriculture parcel as barren changes the labels but not one pixel
    # of the image: their texture is the same by construction.
    layout = S.make_layout(1024, 1024, 3)
    swapped = S.make_layout(1024, 1024, 3)
    for f in swapped.features:
        if f.value == S.AGRICULTURE:
            f.value = S.BARREN
    names = S.band_names(4)
    img_a, lab_a = S.render_block(layout, 3, names, 0, 0, 512, 1024)
    img_b, lab_b = S.render_block(swapped, 3, names, 0, 0, 512, 1024)
    assert (lab_a == S.AGRICULTURE).sum() > 10_000 and not np.array_equal(lab_a, lab_b)
    assert np.array_equal(img_a, img_b)


def _window_stats(image: np.ndarray, inside: np.ndarray, k: int = 32) -> np.ndarray:
    """Per-band mean and std of every k x k window lying wholly inside a mask: (n, 2 * bands)."""
    b, h, w = image.shape
    h, w = h // k * k, w // k * k
    full = inside[:h, :w].reshape(h // k, k, w // k, k).all(axis=(1, 3))
    tiles = image[:, :h, :w].reshape(b, h // k, k, w // k, k).transpose(1, 3, 0, 2, 4)[full]
    tiles = tiles.reshape(len(tiles), b, k * k)
    return np.concatenate([tiles.mean(2), tiles.std(2)], axis=1)


def test_agriculture_and_barren_look_alike_locally(scene):
    out, result, image, labels = scene
    a = _window_stats(image, labels == S.AGRICULTURE)
    b = _window_stats(image, labels == S.BARREN)
    assert len(a) >= 20 and len(b) >= 20, (len(a), len(b))
    both = np.concatenate([a, b])
    spread = np.percentile(both, 75, axis=0) - np.percentile(both, 25, axis=0)
    # A 32 px window of either class has the same mean and texture, within a fraction of
    # the natural spread between windows of one class ...
    gap = np.abs(np.median(a, axis=0) - np.median(b, axis=0))
    assert np.all(gap < 0.6 * spread), (gap, spread)
    # ... while every other class is many spreads away.
    for other in (S.GRASSLAND, S.FOREST, S.WATER):
        o = _window_stats(image, labels == other)
        assert np.max(np.abs(np.median(o, axis=0) - np.median(a, axis=0)) / spread) > 3


def test_agriculture_is_rectangles_barren_is_blobs(scene):
    out, result, image, labels = scene

    def rectangularity(value):
        # Close the 2-4 px road gaps, then area / bounding-box area per region.
        mask = _erode(_dilate(labels == value, 3), 3).astype(np.uint8)
        scores = []
        for geom, _ in features.shapes(mask, mask=mask.astype(bool)):
            xs, ys = np.array(geom["coordinates"][0]).T
            if xs.min() <= 0 or ys.min() <= 0 or xs.max() >= SIZE or ys.max() >= SIZE:
                continue  # cut by the scene's edge
            poly = shape(geom)
            if poly.area < 5000:
                continue
            minx, miny, maxx, maxy = poly.bounds
            scores.append(poly.area / ((maxx - minx) * (maxy - miny)))
        return np.array(scores)

    agri, barren = rectangularity(S.AGRICULTURE), rectangularity(S.BARREN)
    assert len(agri) >= 1 and len(barren) >= 1, (agri, barren)
    assert np.median(agri) > 0.95, agri
    assert np.median(barren) < 0.85, barren
    # Same sizes: both fill a similar share of the scene with shapes of similar area.
    layout = S.make_layout(SIZE, SIZE, 3)
    a = [f.geometry.area for f in layout.of_class(S.AGRICULTURE)]
    b = [f.geometry.area for f in layout.of_class(S.BARREN)]
    assert 0.5 < np.median(a) / np.median(b) < 2.0


def test_roads_are_thin_and_fade_when_downsampled(scene):
    out, result, image, labels = scene
    road = labels == S.ROAD
    # 2-4 px wide: an erosion by a 5 x 5 square leaves only crossings.
    assert _erode(road, 2).sum() < 0.03 * road.sum()
    assert _erode(road, 1).sum() > 0.05 * road.sum()  # 3-4 px roads survive a 3 x 3 erosion
    bright = image.mean(0)
    full = _road_contrast(bright, road.astype(np.float64), 6)
    k = 4
    lo = bright.reshape(SIZE // k, k, SIZE // k, k).mean((1, 3))
    share = road.reshape(SIZE // k, k, SIZE // k, k).mean((1, 3))
    coarse = _road_contrast(lo, share, 3)
    # At full resolution most road pixels stand out of their surroundings; averaged over
    # 4 x 4 pixels (the global branch sees the window 3.7x downsampled) few cells do.
    assert np.median(full) > 1.8 and (full > 2).mean() > 0.45, (np.median(full), (full > 2).mean())
    assert np.median(coarse) < 1.4, np.median(coarse)
    assert (coarse > 2).mean() < 0.5 * (full > 2).mean()


def test_same_seed_same_pixels(tmp_path):
    a = S.synth(tmp_path / "a", size=512, seed=7)
    b = S.synth(tmp_path / "b", size=512, seed=7)
    c = S.synth(tmp_path / "c", size=512, seed=8)

    def pixels(result):
        with rasterio.open(result.scene) as img, rasterio.open(result.labels) as lab:
            return img.read(), lab.read(1)

    (ia, la), (ib, lb), (_, lc) = pixels(a), pixels(b), pixels(c)
    assert np.array_equal(ia, ib) and np.array_equal(la, lb)
    assert not np.array_equal(la, lc)
    with fiona.open(a.polygons) as fa, fiona.open(b.polygons) as fb:
        assert [(f.geometry["coordinates"], f.properties["class_id"]) for f in fa] == \
               [(f.geometry["coordinates"], f.properties["class_id"]) for f in fb]


def test_blocks_tile_without_seams():
    # The image of a window does not depend on how the scene is cut into blocks:
    # the noise fields are functions of the position.
    a = S.value_noise(1, 2, 12.0, 100, 200, 64, 64)
    b = S.value_noise(1, 2, 12.0, 90, 150, 100, 150)[10:74, 50:114]
    assert np.array_equal(a, b)
    f = S.fine_noise(1, 1, 100, 200, 64, 64)
    g = S.fine_noise(1, 1, 60, 180, 140, 100)[40:104, 20:84]
    np.testing.assert_allclose(f, g, atol=1e-5)
    assert abs(float(S.fine_noise(0, 1, 0, 0, 512, 512).std()) - 1) < 0.05


def test_bands_dtype_and_geographic_crs(tmp_path):
    r = S.synth(tmp_path / "g", size=512, bands=4, dtype="uint16", crs="EPSG:4326",
                resolution=2.0, seed=1)
    with rasterio.open(r.scene) as img, rasterio.open(r.labels) as lab:
        assert img.count == 4 and img.dtypes[0] == "uint16"
        assert img.descriptions == ("red", "green", "blue", "nir")
        assert img.crs.is_geographic
        # 2 m on the ground: about 1.8e-5 degrees of latitude, more of longitude.
        assert img.res[1] == pytest.approx(2 / 110_574, rel=1e-6)
        assert img.res[0] > img.res[1]
        data = img.read().astype(np.float64)
        labels = lab.read(1)
    assert data.max() > 1000  # 16-bit range, not 8-bit values in a 16-bit file
    nir = data[3]
    assert nir[labels == S.FOREST].mean() > nir[labels == S.GRASSLAND].mean()
    assert nir[labels == S.FOREST].mean() > 5 * nir[labels == S.WATER].mean()
    assert nir[labels == S.FOREST].mean() > 2 * data[0][labels == S.FOREST].mean()

    one = S.synth(tmp_path / "p", size=256, bands=1, crs="EPSG:3857", resolution=1.0)
    with rasterio.open(one.scene) as img:
        assert img.count == 1 and img.descriptions == ("pan",)
        assert img.crs.to_epsg() == 3857 and img.res == (1.0, 1.0)


def test_bad_options(tmp_path):
    with pytest.raises(GlnetError, match="--bands must be 1 to 6"):
        S.synth(tmp_path / "x", size=256, bands=7)
    with pytest.raises(GlnetError, match="--size"):
        S.synth(tmp_path / "x", size=100)
    with pytest.raises(GlnetError, match="not a CRS"):
        S.synth(tmp_path / "x", size=256, crs="EPSG:999999")
    with pytest.raises(GlnetError, match="--resolution"):
        S.synth(tmp_path / "x", size=256, resolution=-1)
    (tmp_path / "file").write_text("")
    with pytest.raises(GlnetError, match="not a folder"):
        S.synth(tmp_path / "file", size=256)


def test_failed_run_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(S, "_write_polygons", boom)
    with pytest.raises(RuntimeError):
        S.synth(tmp_path / "out", size=256)
    assert not (tmp_path / "out").exists()  # not even the folder it created
    (tmp_path / "mine").mkdir()
    with pytest.raises(RuntimeError):
        S.synth(tmp_path / "mine", size=256)
    assert list((tmp_path / "mine").iterdir()) == []  # the user's folder stays


def test_cli_refuses_to_overwrite(tmp_path):
    out = tmp_path / "nested" / "scene"
    run = [GLNET, "synth", str(out), "--size", "256", "--seed", "2"]
    res = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "256 x 256 px" in res.stdout and sorted(p.name for p in out.iterdir()) == sorted(S.OUTPUTS)
    before = (out / "scene.tif").read_bytes()
    res = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "already exists (use --overwrite" in res.stderr
    assert res.stderr.strip().count("\n") == 0
    res = subprocess.run([*run, "--overwrite", "--seed", "5"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (out / "scene.tif").read_bytes() != before
