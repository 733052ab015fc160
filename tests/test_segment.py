"""Streaming segmentation of whole scenes: grids, blending, georeferencing, COGs, bad inputs."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import fixtures_models as fm
import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.transform import from_origin

from glnet.config import SegmentOptions
from glnet.errors import Cancelled, GlnetError
from glnet.nn.predict import predict_window
from glnet.raster.masks import CLASSES_TAG, NODATA, read_classes
from glnet.raster.tensors import BandStatistics, to_tensor
from glnet.raster.windows import AxisPlan, WindowGrid
from glnet.segment.probabilities import BandAccumulator
from glnet.segment.scene import segment

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
LANDSAT = REAL / "landsat7-rgb-byte" / "RGB.byte.tif"
NAIP = REAL / "naip-opengeos" / "m_4709963_se_14_1_20200831.tif"
SPACENET = REAL / "spacenet-atlanta-buildings" / "sample_geotiff.tif"
SYSTEM_PYTHON = "/usr/bin/python3"

# Tests run on one thread: the tiny model gains nothing from two, and the
# machine may be shared.
OPTS = SegmentOptions(threads=1)


# -- fixtures ---------------------------------------------------------------------------------


def write_scene(path: Path, image: np.ndarray, transform=None, crs="EPSG:32633",
                nodata=0, **extra) -> Path:
    profile = dict(driver="GTiff", width=image.shape[2], height=image.shape[1],
                   count=image.shape[0], dtype=image.dtype.name, crs=crs,
                   transform=transform or from_origin(500000, 4000000, 2.0, 2.0), nodata=nodata)
    profile.update(extra)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(image)
    return path


def read(path: Path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds.profile, ds


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cog_valid(path: Path) -> bool | None:
    """GDAL's own COG validator (system Python with GDAL), or None if unavailable."""
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import osgeo_utils.samples."
                            "validate_cloud_optimized_geotiff"], capture_output=True)
    if probe.returncode != 0:
        return None
    res = subprocess.run([SYSTEM_PYTHON, "-m", "osgeo_utils.samples."
                          "validate_cloud_optimized_geotiff", str(path)],
                         capture_output=True, text=True)
    return res.returncode == 0 and "is a valid cloud optimized GeoTIFF" in res.stdout


def model_for(trained, path: Path, bands: list[int] | None = None):
    """The trained model adapted to a real raster's band count, with its statistics."""
    model, meta = trained
    with rasterio.open(path) as ds:
        idx = bands or list(range(1, ds.count + 1))
        stats = BandStatistics(len(idx))
        arr = ds.read(idx)
        stats.update(arr, (ds.read_masks(idx) > 0).any(0))
        dtype = ds.dtypes[0]
    mean, std = stats.result()
    return fm.with_bands(model, meta, len(idx), mean, std, dtype=dtype)


# -- the grid and the blending weights -----------------------------------------------------


@pytest.mark.parametrize("size,window,overlap,blend", [
    (1000, 192, 48, 32), (193, 192, 48, 48), (5000, 1880, 470, 128), (700, 112, 28, 28),
    (50, 112, 28, 28), (640, 160, 0, 16)])
def test_axis_weights_cover_every_pixel_and_sum_to_one(size, window, overlap, blend):
    plan = AxisPlan.build(size, window, overlap, blend)
    total = np.zeros(size)
    for k, s in enumerate(plan.starts):
        assert 0 <= s and s + plan.length <= size
        w = plan.weight(k, s, s + plan.length)
        lo, hi = plan.support(k)
        assert s <= lo < hi <= s + plan.length
        assert (w[lo - s:hi - s] > 0).all() and w[:lo - s].sum() == 0 and w[hi - s:].sum() == 0
        total[s:s + plan.length] += w
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    # The scene's border is never tapered.
    assert plan.weight(0, 0, 1)[0] == 1.0
    last = len(plan) - 1
    assert plan.weight(last, size - 1, size)[0] == 1.0
    # Segments tile the axis.
    assert plan.segments[0].lo == 0 and plan.segments[-1].hi == size
    for a, b in zip(plan.segments, plan.segments[1:]):
        assert a.hi == b.lo


def test_band_accumulator_equals_whole_scene_blend_with_bounded_memory():
    """Cells assembled from the band equal a whole-scene weighted mean; memory ~ width only."""
    rng = np.random.default_rng(0)
    peaks = []
    for height in (300, 900):
        grid = WindowGrid.build(height, 410, 100, 30, 20)
        C = 3
        probs = {w.index: rng.random((C, w.height, w.width)).astype(np.float32) for w in grid}
        num = np.zeros((C, height, 410))
        den = np.zeros((height, 410))
        for w in grid:
            wr, wc = grid.weights(w)
            ww = wr[:, None] * wc[None, :]
            num[:, w.top:w.top + w.height, w.left:w.left + w.width] += probs[w.index] * ww
            den[w.top:w.top + w.height, w.left:w.left + w.width] += ww
        out = np.full((C, height, 410), np.nan)
        seen = np.zeros((height, 410), int)

        def emit(c, out=out, seen=seen):
            out[:, c.top:c.top + c.height, c.left:c.left + c.width] = c.probabilities
            seen[c.top:c.top + c.height, c.left:c.left + c.width] += 1

        acc = BandAccumulator(grid, C, emit)
        for w in grid:
            acc.add(w, probs[w.index], np.ones((w.height, w.width), bool))
        assert (seen == 1).all()  # every pixel finished exactly once
        np.testing.assert_allclose(out, num / den, atol=1e-5)
        assert acc.pending_bytes == 0
        peaks.append(acc.peak_bytes)
    assert peaks[0] == peaks[1]  # three times the rows, the same memory
    assert peaks[0] <= 3 * 4 * (20 * 410 + 100 * 20)  # one ramp band + one ramp column


# -- equality with the single-pass model ---------------------------------------------------


def test_model_kept_after_stage_one_runs_the_global_branch_only(trained, tmp_path):
    """Training keeps the best model by validation; if that came in stage 1, the
    local branch in the file is untrained and must not be used."""
    from dataclasses import replace

    model, meta = trained
    image, _ = fm.landscape(200, 260, seed=8)
    scene = write_scene(tmp_path / "s.tif", image)
    stage1 = (model, replace(meta, stages=(1,)))
    segment(scene, stage1, tmp_path / "default.tif", OPTS)
    segment(scene, trained, tmp_path / "mode1.tif", OPTS.replace(mode=1))
    segment(scene, trained, tmp_path / "mode2.tif", OPTS.replace(mode=2))
    default, mode1 = read(tmp_path / "default.tif")[0], read(tmp_path / "mode1.tif")[0]
    np.testing.assert_array_equal(default, mode1)
    assert not np.array_equal(default, read(tmp_path / "mode2.tif")[0])
    for opts in (OPTS.replace(mode=2), OPTS.replace(refine="confidence")):
        with pytest.raises(GlnetError, match="trained through stage 1 only"):
            segment(scene, stage1, tmp_path / "x.tif", opts)
    assert not (tmp_path / "x.tif").exists()


def test_scene_in_one_window_equals_single_pass(trained, tmp_path):
    model, meta = trained
    image, _ = fm.landscape(90, 100, seed=3)
    image[:, :10, :15] = 0  # a nodata corner
    scene = write_scene(tmp_path / "small.tif", image)
    res = segment(scene, trained, tmp_path / "mask.tif",
                  OPTS.replace(probabilities=tmp_path / "p.tif"))
    assert res.windows == 1
    valid = (image != 0).any(0)
    x = to_tensor(image, meta.mean, meta.std, valid)
    probs = predict_window(model, x, sub_batch=OPTS.sub_batch, smooth_patches=True,
                           precision=res.precision).probabilities
    expected = probs.argmax(0).numpy().astype(np.uint8)
    expected[~valid] = NODATA
    mask, profile, _ = read(tmp_path / "mask.tif")
    np.testing.assert_array_equal(mask, expected)
    with rasterio.open(tmp_path / "p.tif") as ds:
        pct = ds.read()
        assert ds.scales == (0.01,) * 3
    want = np.rint(probs.numpy() * 100).astype(np.uint8)
    want[:, ~valid] = NODATA
    np.testing.assert_array_equal(pct, want)
    assert res.valid_pixels == int(valid.sum())


# -- two grids, seams ----------------------------------------------------------------------


def _distance_to_edges(labels: np.ndarray, limit: int = 8) -> np.ndarray:
    edge = np.zeros(labels.shape, bool)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[1:] |= labels[:-1] != labels[1:]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:, 1:] |= labels[:, :-1] != labels[:, 1:]
    cur = torch.from_numpy(edge).float()[None, None]
    dist = np.full(labels.shape, limit + 1)
    for k in range(limit + 1):
        hit = cur[0, 0].numpy() > 0
        dist[(dist > limit) & hit] = k
        cur = torch.nn.functional.max_pool2d(cur, 3, 1, 1)
    return dist


def test_a_model_in_training_mode_is_left_as_it_was(trained, tmp_path):
    model, meta = trained
    image, _ = fm.landscape(96, 128, seed=3, cell=48)
    scene = write_scene(tmp_path / "scene.tif", image, nodata=None)
    model.train()
    try:
        segment(scene, (model, meta), tmp_path / "a.tif", OPTS)
        assert model.training  # segment predicted with an eval-mode copy
    finally:
        model.eval()
    segment(scene, (model, meta), tmp_path / "b.tif", OPTS)
    assert np.array_equal(read(tmp_path / "a.tif")[0], read(tmp_path / "b.tif")[0])


def test_an_unusable_device_is_a_clear_error(trained, tmp_path):
    image, _ = fm.landscape(96, 128, seed=3, cell=48)
    scene = write_scene(tmp_path / "scene.tif", image, nodata=None)
    asks = {"tpu": "device must be 'cpu' or 'cuda', not 'tpu'"}
    if not torch.cuda.is_available():
        asks["cuda"] = "device 'cuda' asked for, but no CUDA GPU is available to torch"
    for device, message in asks.items():
        with pytest.raises(GlnetError, match=message):
            segment(scene, trained, tmp_path / "mask.tif", OPTS.replace(device=device))
        assert not (tmp_path / "mask.tif").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_segment_on_cuda_matches_cpu(trained, tmp_path):
    image, labels = fm.landscape(480, 640, seed=5, cell=160)
    scene = write_scene(tmp_path / "scene.tif", image, nodata=None)
    segment(scene, trained, tmp_path / "cpu.tif", OPTS)
    segment(scene, trained, tmp_path / "gpu.tif", OPTS.replace(device="cuda"))
    assert all(p.device.type == "cpu" for p in trained[0].parameters())  # the caller's model
    cpu, gpu = read(tmp_path / "cpu.tif"), read(tmp_path / "gpu.tif")
    assert (cpu[0] == gpu[0]).mean() >= 0.999 and (gpu[0] == labels).mean() > 0.95
    assert cpu[1] == gpu[1]  # CRS, transform, tiling of the mask


def test_two_window_grids_agree_without_seams(trained, tmp_path):
    image, labels = fm.landscape(480, 640, seed=5, cell=160)
    scene = write_scene(tmp_path / "scene.tif", image, nodata=None)
    a = segment(scene, trained, tmp_path / "a.tif", OPTS.replace(probabilities=tmp_path / "pa.tif"))
    b = segment(scene, trained, tmp_path / "b.tif",
                OPTS.replace(window_size=160, overlap=60, blend=48))
    assert a.windows == len(WindowGrid.build(480, 640, 112, 28, 28)) == 48
    assert b.windows == len(WindowGrid.build(480, 640, 160, 60, 48)) == 30
    ma, mb = read(tmp_path / "a.tif")[0], read(tmp_path / "b.tif")[0]
    assert (ma == labels).mean() > 0.95 and (mb == labels).mean() > 0.95
    agree = ma == mb
    far = _distance_to_edges(labels) > 4
    # Away from class boundaries the grids agree; along them the tiny model's
    # boundary placement (stride-4 logits) moves by a pixel or two with the grid.
    # Grid B's 160 px windows are not the size the model was trained at: where
    # the two differ more than 4 px from a boundary, B is the one that is wrong
    # (on a 2-core AVX2 machine, whose tiny model differs from an AVX-512
    # one's: 412 pixels, 99.85 % agreement, all of them B's errors, 5-9 px out).
    assert agree[far].mean() >= 0.998, agree[far].mean()
    assert agree.mean() >= 0.97, agree.mean()

    # No seams: across the lines where windows hand over, the blended
    # probabilities change no more than anywhere else.
    with rasterio.open(tmp_path / "pa.tif") as ds:
        p = ds.read().astype(np.float32) / 100
    grid = WindowGrid.build(480, 640, 112, 28, 28)
    jumps = np.abs(np.diff(p, axis=2)).sum(0)  # between columns x and x+1
    jumps[~(far[:, 1:] & far[:, :-1])] = np.nan  # class boundaries are real changes
    per_col = np.nanmean(jumps, axis=0)
    hand_over = sorted({x for s, w in grid.cols.ramps for x in (s - 1, s + w - 1)})
    typical = np.nanmedian(per_col)
    assert np.nanmax(per_col[hand_over]) < 3 * typical + 0.002


# -- real rasters --------------------------------------------------------------------------


@pytest.mark.parametrize("path,bands", [(LANDSAT, None), (NAIP, None), (SPACENET, None)],
                         ids=["landsat-rgb", "naip-4band", "spacenet-uint16"])
def test_real_rasters_keep_grid_nodata_and_are_valid_cogs(trained, tmp_path, path, bands):
    if not path.exists():
        pytest.skip(f"{path} not available")
    before = digest(path)
    model = model_for(trained, path, bands)
    out = tmp_path / "mask.tif"
    res = segment(path, model, out, OPTS)
    with rasterio.open(path) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs
        assert dst.transform == src.transform
        assert (dst.width, dst.height) == (src.width, src.height)
        assert dst.count == 1 and dst.dtypes[0] == "uint8" and dst.nodata == NODATA
        invalid_in = ~(src.read_masks() > 0).any(0)
        mask = dst.read(1)
        np.testing.assert_array_equal(mask == NODATA, invalid_in)
        assert set(np.unique(mask[~invalid_in])) <= {0, 1, 2}
        assert dst.colormap(1)[0] == (31, 120, 180, 255)
        assert [c.name for c in read_classes(dst)] == ["water", "forest", "bare soil"]
        assert dst.descriptions == ("land cover class",)
        assert dst.overviews(1) or max(src.width, src.height) <= 512
        assert res.valid_pixels == int((~invalid_in).sum())
    if path == LANDSAT:
        assert invalid_in.sum() > 100_000  # the collar exists, and stayed nodata
    assert cog_valid(out) in (True, None)
    assert digest(path) == before
    assert out.with_suffix(".qml").exists()


# -- inputs --------------------------------------------------------------------------------


def test_extent_and_aoi_crop_on_the_scene_grid(trained, tmp_path):
    import fiona
    from rasterio.features import rasterize
    from rasterio.warp import transform_geom
    from shapely.geometry import Polygon, mapping

    image, _ = fm.landscape(200, 260, seed=11)
    t = from_origin(500000, 4000000, 2.0, 2.0)
    scene = write_scene(tmp_path / "scene.tif", image, transform=t)
    # Extent: snapped outward to whole pixels.
    res = segment(scene, trained, tmp_path / "ext.tif",
                  OPTS.replace(extent=(500021.0, 3999701.0, 500301.0, 3999901.0)))
    mask, profile, _ = read(tmp_path / "ext.tif")
    assert profile["transform"] == t @ Affine.translation(10, 49)
    assert mask.shape == (101, 141) and (res.width, res.height) == (141, 101)
    assert (mask != NODATA).all()
    # AOI: a triangle stored in WGS 84; outside it nodata, inside classes.
    tri = Polygon([(500050, 3999950), (500450, 3999900), (500200, 3999640)])
    geo = transform_geom("EPSG:32633", "EPSG:4326", mapping(tri))
    schema = {"geometry": "Polygon", "properties": {"id": "int"}}
    with fiona.open(tmp_path / "aoi.gpkg", "w", driver="GPKG", crs="EPSG:4326",
                    schema=schema) as dst:
        dst.write({"geometry": geo, "properties": {"id": 1}})
    segment(scene, trained, tmp_path / "aoi.tif", OPTS.replace(aoi=tmp_path / "aoi.gpkg"))
    mask, profile, _ = read(tmp_path / "aoi.tif")
    tr = profile["transform"]
    assert tr.a == t.a and tr.e == t.e and ((tr.c - t.c) / 2).is_integer()
    inside = rasterize([tri], out_shape=mask.shape, transform=tr).astype(bool)
    # The reprojected triangle lands on the pixels it covers (a pixel or so of
    # reprojection rounding along its edges is tolerated).
    assert ((mask != NODATA) != inside).sum() <= 0.01 * inside.sum()
    assert (mask[inside] != NODATA).mean() > 0.99


def test_resolution_resampled_to_the_model_and_back(trained, tmp_path):
    from dataclasses import replace

    model, meta = trained
    image, labels = fm.landscape(160, 200, seed=2, cell=80)
    # The same landscape at twice the resolution (1 m pixels), for a 2 m model.
    fine = np.repeat(np.repeat(image, 2, axis=1), 2, axis=2)
    t = from_origin(500000, 4000000, 1.0, 1.0)
    scene = write_scene(tmp_path / "fine.tif", fine, transform=t)
    res = segment(scene, (model, replace(meta, resolution=2.0)), tmp_path / "m.tif", OPTS)
    assert res.resampled and res.work_size == (160, 200)
    mask, profile, _ = read(tmp_path / "m.tif")
    assert profile["transform"] == t and mask.shape == (320, 400)
    coarse_truth = np.repeat(np.repeat(labels, 2, axis=0), 2, axis=1)
    assert (mask == coarse_truth).mean() > 0.9
    assert any("resampled" in w for w in res.warnings)
    # With areas of interest, the exact outline applies on the scene's grid.
    import fiona
    from rasterio.features import rasterize
    from shapely.geometry import Polygon, mapping

    tri = Polygon([(500030, 3999990), (500390, 3999950), (500200, 3999690)])
    with fiona.open(tmp_path / "aoi.gpkg", "w", driver="GPKG", crs="EPSG:32633",
                    schema={"geometry": "Polygon", "properties": {}}) as dst:
        dst.write({"geometry": mapping(tri), "properties": {}})
    segment(scene, (model, replace(meta, resolution=2.0)), tmp_path / "aoi.tif",
            OPTS.replace(aoi=tmp_path / "aoi.gpkg"))
    mask, profile, _ = read(tmp_path / "aoi.tif")
    inside = rasterize([tri], out_shape=mask.shape, transform=profile["transform"]).astype(bool)
    np.testing.assert_array_equal(mask != NODATA, inside)


def test_rotated_geotransform_is_kept(trained, tmp_path):
    from dataclasses import replace

    model, meta = trained
    image, _ = fm.landscape(120, 150, seed=4)
    rot = from_origin(500000, 4000000, 2.0, 2.0) @ Affine.rotation(20)
    scene = write_scene(tmp_path / "rot.tif", image, transform=rot)
    north = write_scene(tmp_path / "north.tif", image)
    segment(scene, trained, tmp_path / "rot_mask.tif", OPTS)
    segment(north, trained, tmp_path / "north_mask.tif", OPTS)
    a, pa, _ = read(tmp_path / "rot_mask.tif")
    b, _, _ = read(tmp_path / "north_mask.tif")
    assert pa["transform"] == rot
    np.testing.assert_array_equal(a, b)  # windows live in pixel space
    with pytest.raises(GlnetError, match="rotated or sheared"):
        segment(scene, (model, replace(meta, resolution=4.0)), tmp_path / "x.tif", OPTS)


def test_coarse_to_fine_skips_confident_patches(trained, tmp_path):
    # Water on the left, bare soil on the right: only patches on the shore are uncertain.
    # (The tiny model's least confident pixel in a patch inland is about 0.45; a patch is
    # skipped when all its pixels reach the threshold.)
    labels = np.where(np.arange(336)[None, :] < 150, 0, 2).repeat(224, axis=0).astype(np.uint8)
    noise = np.random.default_rng(0).normal(0, 10, (3, 224, 336))
    image = np.clip(fm.COLOURS[labels].transpose(2, 0, 1) + noise, 0, 255).astype(np.uint8)
    scene = write_scene(tmp_path / "s.tif", image, nodata=None)
    full = segment(scene, trained, tmp_path / "full.tif", OPTS)
    c2f = segment(scene, trained, tmp_path / "c2f.tif",
                  OPTS.replace(refine="confidence", confidence=0.4))
    assert c2f.refined < full.refined == full.patches
    a, b = read(tmp_path / "full.tif")[0], read(tmp_path / "c2f.tif")[0]
    assert (a == b).mean() > 0.95 and (b == labels).mean() > 0.9


# -- bad inputs and interruptions ----------------------------------------------------------


def test_bad_inputs_are_clear_errors_and_leave_inputs_untouched(trained, model_file, tmp_path):
    model, meta = trained
    out = tmp_path / "out"
    out.mkdir()

    def fails(scene, match, target=None, options=OPTS, model=trained):
        before = digest(scene) if Path(scene).is_file() else None
        with pytest.raises(GlnetError, match=match):
            segment(scene, model, target or out / "mask.tif", options)
        if before is not None:
            assert digest(scene) == before
        assert sorted(p.name for p in out.iterdir()) == []

    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    fails(text, "not a raster GDAL can read")

    data = NAIP.read_bytes() if NAIP.exists() else None
    if data is not None:
        truncated = tmp_path / "truncated.tif"
        truncated.write_bytes(data[:len(data) // 2])
        fails(truncated, "truncated or corrupt|not a raster GDAL can read",
              model=model_for(trained, NAIP))

    image, _ = fm.landscape(60, 60, seed=1)
    four = write_scene(tmp_path / "four.tif", np.concatenate([image, image[:1]]),
                       photometric="MINISBLACK")
    with rasterio.open(four) as ds:
        assert ds.colorinterp[-1] != rasterio.enums.ColorInterp.alpha
    fails(four, r"has 4 band\(s\) but the model takes 3 .*--bands 1,2,3")
    fails(four, r"band 7 does not exist", options=OPTS.replace(bands=(1, 2, 7)))
    ok = segment(four, trained, out / "bands.tif", OPTS.replace(bands=(3, 2, 1)))
    assert ok.valid_pixels == 3600
    # A trailing alpha band is not a band of the model: dropped, and used as the mask.
    rgba = np.concatenate([image, np.full((1, 60, 60), 255, np.uint8)])
    rgba[3, :20] = 0
    alpha = write_scene(tmp_path / "rgba.tif", rgba, nodata=None, photometric="RGB",
                        alpha="YES")
    ok = segment(alpha, trained, out / "rgba.tif", OPTS)
    assert ok.valid_pixels == 40 * 60
    for p in out.iterdir():
        p.unlink()

    empty = write_scene(tmp_path / "empty.tif", np.zeros((3, 80, 90), np.uint8))
    fails(empty, "no valid pixels in the scene")

    scene = write_scene(tmp_path / "scene.tif", image)
    fails(scene, "does not exist", target=tmp_path / "missing" / "m.tif")
    fails(scene, "would overwrite an input", target=scene)
    fails(scene, "would overwrite an input", target=model_file, model=model_file)
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        fails(scene, "not writable", target=locked / "m.tif")


def test_float_scene_scaled_with_model_statistics_and_nan_nodata(trained, tmp_path):
    from dataclasses import replace

    model, meta = trained
    image, labels = fm.landscape(80, 90, seed=15)
    refl = image.astype(np.float32) / 255  # reflectance-like floats
    refl[:, 30:40, :] = np.nan
    scene = write_scene(tmp_path / "float.tif", refl, nodata=float("nan"))
    scaled = replace(meta, dtype="float32", mean=tuple(m / 255 for m in meta.mean),
                     std=tuple(s / 255 for s in meta.std))
    res = segment(scene, (model, scaled), tmp_path / "m.tif", OPTS)
    mask = read(tmp_path / "m.tif")[0]
    assert (mask[30:40] == NODATA).all() and (mask[:30] != NODATA).all()
    assert res.valid_pixels == 70 * 90
    assert (mask[mask != NODATA] == labels[mask != NODATA]).mean() > 0.9


def test_scene_smaller_than_a_patch(trained, tmp_path):
    image, _ = fm.landscape(20, 30, seed=6)
    scene = write_scene(tmp_path / "tiny.tif", image)
    res = segment(scene, trained, tmp_path / "m.tif", OPTS)
    mask, profile, _ = read(tmp_path / "m.tif")
    assert mask.shape == (20, 30) and (mask != NODATA).all() and res.windows == 1
    assert cog_valid(tmp_path / "m.tif") in (True, None)


def test_cancel_leaves_nothing_and_progress_is_monotonic(trained, tmp_path):
    image, _ = fm.landscape(300, 300, seed=9)
    src = tmp_path / "in"
    src.mkdir()
    scene = write_scene(src / "scene.tif", image)
    out = tmp_path / "out"
    out.mkdir()
    calls = []
    with pytest.raises(Cancelled):
        segment(scene, trained, out / "mask.tif", OPTS.replace(probabilities=out / "p.tif"),
                progress=lambda f, m=None: calls.append(f), cancel=lambda: len(calls) >= 5)
    assert list(out.iterdir()) == []
    seen = []
    segment(scene, trained, out / "mask.tif", OPTS, progress=lambda f, m=None: seen.append(f))
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) > 9
    assert sorted(p.name for p in out.iterdir()) == ["mask.qml", "mask.tif"]


def test_progress_moves_within_a_single_window(model_file, tmp_path):
    from glnet.modelfile import read_metadata

    side = read_metadata(model_file).net.window_size
    image, _ = fm.landscape(side, side, seed=9)
    scene = write_scene(tmp_path / "scene.tif", image)
    seen = []
    res = segment(scene, model_file, tmp_path / "mask.tif", OPTS,
                  progress=lambda f, m=None: seen.append(f))
    # One window, and progress between its start and its end: per batch of its patches.
    inside = [f for f in seen if 0 < f < 1]
    assert res.windows == 1 and len(inside) >= 3 and inside == sorted(inside), seen


# -- the command line and QGIS -------------------------------------------------------------


def test_cli_segment(model_file, tmp_path):
    image, _ = fm.landscape(150, 170, seed=12)
    scene = write_scene(tmp_path / "scene.tif", image)
    exe = str(Path(sys.executable).with_name("glnet"))
    args = [exe, "segment", str(scene), "-m", str(model_file), "-o", str(tmp_path / "m.tif"),
            "--probabilities", str(tmp_path / "p.tif"), "--probability-kind", "confidence",
            "--threads", "1", "--batch", "4"]
    if importlib.util.find_spec("glnet.vectorize.polygons") is not None:
        args += ["--polygons", str(tmp_path / "m.gpkg")]
    res = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "wrote" in res.stdout and "170 x 150 px" in res.stdout
    with rasterio.open(tmp_path / "p.tif") as ds:
        assert ds.count == 1 and ds.descriptions == ("confidence (%)",)
    if "--polygons" in args:
        assert (tmp_path / "m.gpkg").exists()
    bad = subprocess.run([exe, "segment", str(scene), "-m", str(tmp_path / "nope.glnet"),
                          "-o", str(tmp_path / "x.tif")], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0
    assert "model file not found" in bad.stderr and not (tmp_path / "x.tif").exists()


@pytest.mark.qgis
def test_qgis_shows_the_class_legend(trained, tmp_path):
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import qgis.core"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("QGIS Python bindings not installed")
    image, _ = fm.landscape(64, 64, seed=13)
    scene = write_scene(tmp_path / "scene.tif", image)
    segment(scene, trained, tmp_path / "mask.tif", OPTS)
    code = (
        "import sys\n"
        "from qgis.core import QgsApplication, QgsRasterLayer\n"
        "app = QgsApplication([], False); app.initQgis()\n"
        "layer = QgsRasterLayer(sys.argv[1], 'mask')\n"
        "r = layer.renderer()\n"
        "print(layer.isValid(), r.type(), '|'.join(c.label for c in r.classes()))\n")
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    res = subprocess.run([SYSTEM_PYTHON, "-c", code, str(tmp_path / "mask.tif")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.stdout.strip().splitlines()[-1] == "True paletted water|forest|bare soil", res.stderr


def test_tags_follow_the_agreed_mask_format(trained, tmp_path):
    import json

    image, _ = fm.landscape(40, 40, seed=14)
    scene = write_scene(tmp_path / "scene.tif", image)
    segment(scene, trained, tmp_path / "mask.tif", OPTS)
    with rasterio.open(tmp_path / "mask.tif") as ds:
        classes = json.loads(ds.tags()[CLASSES_TAG])
        assert classes == [{"value": c.value, "name": c.name, "color": list(c.color)}
                           for c in fm.CLASSES]
        assert ds.colormap(1)[NODATA][3] == 0
    assert shutil.which("gdalinfo") is None or "LAYOUT=COG" in subprocess.run(
        ["gdalinfo", str(tmp_path / "mask.tif")], capture_output=True, text=True).stdout
