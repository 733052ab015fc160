"""Accuracy metrics against hand-computed confusion matrices, and `glnet evaluate` on real
GeoTIFFs and GeoPackages: same grid, warped grids, polygons, reprojection, bad inputs."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import fiona
import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine
from rasterio.warp import transform_geom

from glnet import synth
from glnet.errors import GlnetError
from glnet.evaluate.mask import evaluate
from glnet.metrics import ConfusionMatrix
from glnet.raster.masks import classes_json

GLNET = str(Path(sys.executable).with_name("glnet"))
SIZE = 512

# --------------------------------------------------------------------------- metrics

REF = np.array([0, 0, 0, 1, 1, 2])
PRED = np.array([0, 0, 1, 1, 2, 2])
# rows reference, columns prediction
MATRIX = [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_confusion_matrix_by_hand():
    cm = ConfusionMatrix(3)
    cm.update(PRED, REF)
    assert cm.matrix.tolist() == MATRIX and cm.matrix.dtype == np.int64
    # IoU = TP / (TP + FP + FN): 2/(2+0+1), 1/(1+1+1), 1/(1+1+0)
    np.testing.assert_allclose(cm.iou(), [2 / 3, 1 / 3, 1 / 2])
    assert cm.miou() == pytest.approx((2 / 3 + 1 / 3 + 1 / 2) / 3)
    np.testing.assert_allclose(cm.precision(), [1.0, 0.5, 0.5])
    np.testing.assert_allclose(cm.recall(), [2 / 3, 0.5, 1.0])
    np.testing.assert_allclose(cm.f1(), [4 / 5, 1 / 2, 2 / 3])
    assert cm.mean_f1() == pytest.approx((4 / 5 + 1 / 2 + 2 / 3) / 3)
    assert cm.overall_accuracy() == pytest.approx(4 / 6)
    assert cm.total == 6


def test_ignored_classes_leave_the_means_only():
    cm = ConfusionMatrix(3, ignore_classes=[0])
    cm.update(PRED, REF)
    assert cm.miou() == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert cm.mean_f1() == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert cm.overall_accuracy() == pytest.approx(4 / 6)  # class 0's pixels still count
    assert cm.scored_classes() == [1, 2]
    with pytest.raises(ValueError, match="not among"):
        ConfusionMatrix(3, ignore_classes=[3])


def test_absent_classes_are_nan_and_left_out():
    cm = ConfusionMatrix(5)
    cm.update(PRED, REF)
    iou = cm.iou()
    assert math.isnan(iou[3]) and math.isnan(iou[4]) and math.isnan(cm.f1()[3])
    assert cm.miou() == pytest.approx(0.5)
    # A class predicted but absent from the reference scores 0 and counts.
    cm.update(np.array([4]), np.array([2]))
    assert cm.iou()[4] == 0.0 and math.isnan(cm.recall()[4]) and cm.precision()[4] == 0.0
    assert cm.scored_classes() == [0, 1, 2, 4]
    d = cm.to_dict(["a", "b", "c", "d", "e"])
    text = json.dumps(d, allow_nan=False)  # NaN became null
    assert d["classes"][3]["iou"] is None and d["classes"][3]["name"] == "d"
    assert json.loads(text)["confusion_matrix"][2][4] == 1
    empty = ConfusionMatrix(2)
    assert math.isnan(empty.miou()) and math.isnan(empty.overall_accuracy())


def test_streaming_and_valid_mask():
    rng = np.random.default_rng(0)
    pred, ref = rng.integers(0, 4, (2, 64, 64))
    valid = rng.random((64, 64)) > 0.3
    whole = ConfusionMatrix(4)
    whole.update(pred, ref, valid)
    parts = ConfusionMatrix(4)
    for rows in (slice(0, 10), slice(10, 40), slice(40, 64)):
        parts.update(pred[rows], ref[rows], valid[rows])
    assert np.array_equal(whole.matrix, parts.matrix)
    assert whole.total == valid.sum()
    expected = np.zeros((4, 4), dtype=np.int64)
    np.add.at(expected, (ref[valid], pred[valid]), 1)
    assert np.array_equal(whole.matrix, expected)
    merged = ConfusionMatrix(4).merge(whole).merge(whole)
    assert merged.total == 2 * whole.total
    with pytest.raises(ValueError, match="outside the classes"):
        whole.update(np.array([4]), np.array([0]))
    with pytest.raises(ValueError, match="shape"):
        whole.update(np.zeros(3, int), np.zeros(4, int))


def test_table():
    cm = ConfusionMatrix(4, ignore_classes=[0])
    cm.update(PRED, REF)
    table = cm.format_table(["unknown", "field", "forest", "water"])
    assert "  0 unknown" in table and "(ignored)" in table and "mIoU" in table
    assert "  3 water" in table and "     -" in table  # NaN shown as a dash
    assert "confusion matrix (rows: reference, columns: prediction)" in table
    assert f"{(1 / 3 + 1 / 2) / 2:.3f}" in table


# --------------------------------------------------------------------------- evaluate


@pytest.fixture(scope="module")
def land(tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluate") / "land"
    synth.synth(out, size=SIZE, seed=11)
    with rasterio.open(out / "labels.tif") as ds:
        labels = ds.read(1)
        profile = ds.profile
    return out, labels, profile


def _write(path: Path, array: np.ndarray, profile: dict, tags: bool = True, **changes) -> Path:
    p = dict(profile)
    p.update(width=array.shape[-1], height=array.shape[-2], **changes)
    with rasterio.open(path, "w", **p) as ds:
        ds.write(array, 1)
        if tags:
            ds.update_tags(GLNET_CLASSES=classes_json(synth.CLASSES))
    return path


def _counts(pred: np.ndarray, ref: np.ndarray, n: int = 6) -> np.ndarray:
    ok = (pred != 255) & (ref != 255)
    m = np.zeros((n, n), dtype=np.int64)
    np.add.at(m, (ref[ok], pred[ok]), 1)
    return m


def test_identical_rasters(land):
    out, labels, _ = land
    res = evaluate(out / "labels.tif", out / "labels.tif", block_size=200)
    assert res.matrix.miou() == 1.0 and res.matrix.overall_accuracy() == 1.0
    assert res.reference_kind == "raster on the same grid"
    assert res.class_names == [c.name for c in synth.CLASSES]
    assert np.array_equal(np.diag(res.matrix.matrix), np.bincount(labels.ravel(), minlength=6))


def test_known_perturbation(land, tmp_path):
    out, labels, profile = land
    pred = labels.copy()
    pred[100:200, 50:350] = synth.WATER
    pred[0:10, :] = 255  # nodata: not counted
    path = _write(tmp_path / "pred.tif", pred, profile)
    res = evaluate(path, out / "labels.tif", block_size=128, ignore_classes=[0])
    assert np.array_equal(res.matrix.matrix, _counts(pred, labels))
    assert res.skipped_pixels == 10 * SIZE
    # IoU of water by hand: TP / (ref + pred - TP) over the counted rows.
    ref_w = (labels[10:] == 4).sum()
    pred_w = (pred[10:] == 4).sum()
    tp = ((labels[10:] == 4) & (pred[10:] == 4)).sum()
    assert res.matrix.iou()[4] == pytest.approx(tp / (ref_w + pred_w - tp))
    assert res.matrix.overall_accuracy() == pytest.approx((pred[10:] == labels[10:]).mean())
    assert 0.0 < res.matrix.miou() < 1.0 and res.matrix.scored_classes() == [1, 2, 3, 4, 5]


def test_reference_polygons(land):
    out, labels, _ = land
    res = evaluate(out / "labels.tif", out / "labels.gpkg", block_size=100)
    assert res.matrix.miou() == 1.0 and res.skipped_pixels == 0
    assert "field 'class_id'" in res.reference_kind
    assert np.array_equal(np.diag(res.matrix.matrix), np.bincount(labels.ravel(), minlength=6))


def _copy_features(src_path: Path, dst_path: Path, driver: str, keep=("class_id", "class_name"),
                   crs: str | None = None, where=lambda f: True) -> Path:
    with fiona.open(src_path) as src:
        schema = {"geometry": "Polygon",
                  "properties": {k: v for k, v in src.schema["properties"].items() if k in keep}}
        records = [f for f in src if where(f)]
        src_crs = src.crs_wkt
    with fiona.open(dst_path, "w", driver=driver, schema=schema,
                    crs=crs or src_crs) as dst:
        for f in records:
            geom = dict(f.geometry)
            if crs is not None:
                geom = transform_geom(src_crs, crs, geom)
            dst.write({"geometry": geom,
                       "properties": {k: f.properties[k] for k in keep}})
    return dst_path


def test_polygons_by_name_reprojected_to_wgs84(land, tmp_path):
    out, labels, _ = land
    ref = _copy_features(out / "labels.gpkg", tmp_path / "ref.geojson", "GeoJSON",
                         keep=("class_name",), crs="EPSG:4326")
    res = evaluate(out / "labels.tif", ref)
    # Vertices go to degrees and back to UTM to well under a millimetre; pixel centres are
    # 25 cm from any edge, so the rasterised reference is exact.
    assert res.matrix.miou() == 1.0
    assert "field 'class_name'" in res.reference_kind
    assert any("reprojected" in n for n in res.notes)


def test_polygons_background_and_gaps(land, tmp_path):
    out, labels, _ = land
    ref = _copy_features(out / "labels.gpkg", tmp_path / "ref.shp", "ESRI Shapefile",
                         where=lambda f: f.properties["class_id"] != 0)
    res = evaluate(out / "labels.tif", ref)
    grass = int((labels == 0).sum())
    assert res.skipped_pixels == grass and res.matrix.total == labels.size - grass
    assert res.matrix.miou() == 1.0 and math.isnan(res.matrix.iou()[0])
    res = evaluate(out / "labels.tif", ref, background="grassland")
    assert res.skipped_pixels == 0 and res.matrix.miou() == 1.0


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # rasterio's own use of affine
def test_reference_raster_on_another_grid(land, tmp_path):
    out, labels, profile = land
    t = profile["transform"]
    # A finer grid (3 x 3 sub-pixels per pixel; nearest-neighbour picks the middle one),
    # missing the prediction's first 10 rows.
    fine = np.repeat(np.repeat(labels[10:], 3, axis=0), 3, axis=1)
    ft = Affine(t.a / 3, 0, t.c, 0, t.e / 3, t.f + 10 * t.e)
    path = _write(tmp_path / "fine.tif", fine, profile, transform=ft, blockxsize=256, blockysize=256)
    res = evaluate(out / "labels.tif", path)
    assert "warped" in res.reference_kind
    assert res.matrix.miou() == 1.0 and res.skipped_pixels == 10 * SIZE

    # The same labels reprojected to Web Mercator: resampled, so nearly but not exactly equal.
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    bounds = (t.c, t.f + SIZE * t.e, t.c + SIZE * t.a, t.f)
    dst_t, w, h = calculate_default_transform(profile["crs"], "EPSG:3857", SIZE, SIZE, *bounds)
    merc = np.full((h, w), 255, dtype=np.uint8)
    reproject(labels, merc, src_transform=t, src_crs=profile["crs"], dst_transform=dst_t,
              dst_crs="EPSG:3857", resampling=Resampling.nearest, dst_nodata=255)
    path = _write(tmp_path / "merc.tif", merc, profile, crs="EPSG:3857", transform=dst_t)
    res = evaluate(out / "labels.tif", path)
    assert 0.85 < res.matrix.miou() < 1.0
    assert res.matrix.overall_accuracy() > 0.97


def test_bad_inputs(land, tmp_path):
    out, labels, profile = land
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(GlnetError, match=f"{text}: not a raster"):
        evaluate(text, out / "labels.tif")
    with pytest.raises(GlnetError, match="neither a raster nor a vector"):
        evaluate(out / "labels.tif", text)
    with pytest.raises(GlnetError, match="missing.tif: file not found"):
        evaluate(tmp_path / "missing.tif", out / "labels.tif")
    with pytest.raises(GlnetError, match="one band of class values, got 3 bands"):
        evaluate(out / "scene.tif", out / "labels.tif")
    floats = _write(tmp_path / "f.tif", labels.astype("float32"), profile, dtype="float32")
    with pytest.raises(GlnetError, match="integer class values"):
        evaluate(floats, out / "labels.tif")
    t = profile["transform"]
    far = _write(tmp_path / "far.tif", labels, profile, transform=Affine(t.a, 0, t.c + 1e5, 0, t.e, t.f))
    with pytest.raises(GlnetError, match="does not overlap"):
        evaluate(out / "labels.tif", far)
    with pytest.raises(GlnetError, match="no field 'kind'; its fields are: class_id, class_name"):
        evaluate(out / "labels.tif", out / "labels.gpkg", ref_field="kind")
    with pytest.raises(GlnetError, match="applies to vector references"):
        evaluate(out / "labels.tif", out / "labels.tif", background=0)
    with pytest.raises(GlnetError, match="--ignore-classes: 9"):
        evaluate(out / "labels.tif", out / "labels.tif", ignore_classes=[9])
    # Names that the prediction does not know, and names without a class list.
    odd = tmp_path / "odd.gpkg"
    with fiona.open(odd, "w", driver="GPKG", crs=profile["crs"].to_wkt(),
                    schema={"geometry": "Polygon", "properties": {"kind": "str"}}) as dst:
        x, y = t.c + 10, t.f - 10
        dst.write({"geometry": {"type": "Polygon", "coordinates": [[(x, y), (x + 50, y),
                                                                     (x + 50, y - 50), (x, y)]]},
                   "properties": {"kind": "orchard"}})
    with pytest.raises(GlnetError, match="no class field.*its fields are: kind"):
        evaluate(out / "labels.tif", odd)
    with pytest.raises(GlnetError, match="'orchard'.*not one of the prediction's classes: "
                                         "grassland, agriculture, barren"):
        evaluate(out / "labels.tif", odd, ref_field="kind")
    bare = _write(tmp_path / "bare.tif", labels, profile, tags=False)
    with pytest.raises(GlnetError, match="no GLNET_CLASSES tag"):
        evaluate(bare, odd, ref_field="kind")


def test_cli(land, tmp_path):
    out, labels, profile = land
    pred = labels.copy()
    pred[:, :64] = synth.GRASSLAND
    path = _write(tmp_path / "pred.tif", pred, profile)
    res = subprocess.run([GLNET, "evaluate", str(path), str(out / "labels.gpkg"), "--json",
                          "--ignore-classes", "0", "--block-size", "256"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    expected = ConfusionMatrix(6, [0])
    expected.update(pred, labels)
    assert d["confusion_matrix"] == expected.matrix.tolist()
    assert d["miou"] == pytest.approx(expected.miou()) and d["ignore_classes"] == [0]
    assert [c["name"] for c in d["classes"]][:2] == ["grassland", "agriculture"]
    res = subprocess.run([GLNET, "evaluate", str(path), str(out / "labels.tif")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "mIoU" in res.stdout and "  5 road" in res.stdout
    bad = subprocess.run([GLNET, "evaluate", str(path), str(out / "labels.gpkg"), "--ref-field", "x"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "its fields are: class_id, class_name" in bad.stderr
    assert bad.stderr.strip().count("\n") == 0


def test_synth_copy_evaluates_after_move(land, tmp_path):
    # Outputs are self-contained: a copied folder still evaluates (no absolute paths inside).
    out, _, _ = land
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert evaluate(copy / "labels.tif", copy / "labels.gpkg").matrix.miou() == 1.0


# --------------------------------------------------------------------------- a model

# One thread: on a shared 2-core machine a second torch thread makes small windows several
# times slower. No validation, so the model file is the one after stage 3.
TINY_TRAIN = ["--window", "128", "--patch", "64", "--global-size", "64", "--epochs", "1",
              "--windows-per-epoch", "2", "--val-fraction", "0", "--quiet", "--threads", "1",
              "--seed", "1"]


@pytest.fixture(scope="module")
def land_model(land, tmp_path_factory):
    """A tiny model trained through the three stages on the synthetic landscape (seconds)."""
    from glnet.cli import main

    out, _, _ = land
    model = tmp_path_factory.mktemp("model") / "land.glnet"
    assert main(["train", str(out / "scene.tif"), "--labels", str(out / "labels.tif"),
                 "-o", str(model), *TINY_TRAIN]) == 0
    return model


def test_model_against_labels_equals_segment_then_evaluate(land, land_model, tmp_path):
    from glnet.config import SegmentOptions
    from glnet.evaluate.model import evaluate_model

    out, labels, _ = land
    mask = tmp_path / "mask.tif"
    seg = subprocess.run([GLNET, "segment", str(out / "scene.tif"), "-m", str(land_model),
                          "-o", str(mask), "--threads", "1"], capture_output=True, text=True,
                         timeout=300)
    assert seg.returncode == 0, seg.stderr
    two = subprocess.run([GLNET, "evaluate", str(mask), str(out / "labels.tif"), "--json"],
                         capture_output=True, text=True, timeout=120)
    one = subprocess.run([GLNET, "evaluate", "-m", str(land_model), str(out / "scene.tif"),
                          str(out / "labels.tif"), "--json", "--threads", "1"],
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0 and one.returncode == 0, (two.stderr, one.stderr)
    a, b = json.loads(two.stdout), json.loads(one.stdout)
    assert b["confusion_matrix"] == a["confusion_matrix"]
    assert b["pixels"] == a["pixels"] == SIZE * SIZE and b["miou"] == a["miou"]
    assert [c["name"] for c in b["classes"]] == [c.name for c in synth.CLASSES]
    assert b["prediction"] == f"{out / 'scene.tif'} segmented with {land_model}"
    # the counts are the mask's against the labels, pixel by pixel
    with rasterio.open(mask) as ds:
        pred = ds.read(1)
    assert b["confusion_matrix"] == _counts(pred, labels).tolist()
    # polygons as the reference, through the API
    res = evaluate_model(land_model, out / "scene.tif", out / "labels.gpkg", ignore_classes=[0],
                         segment_options=SegmentOptions(threads=1))
    ref = evaluate(mask, out / "labels.gpkg", ignore_classes=[0])
    assert np.array_equal(res.matrix.matrix, ref.matrix.matrix)
    assert res.matrix.miou() == ref.matrix.miou() and res.matrix.ignore_classes == (0,)


def _loveda_folder(root: Path, out: Path, tiles: int = 2) -> Path:
    """A LoveDA-style folder cut from the synthetic landscape: PNG images, annotations 1..6
    (synthetic class + 1), 0 (no data) in a corner."""
    with rasterio.open(out / "scene.tif") as ds:
        image = ds.read()
    with rasterio.open(out / "labels.tif") as ds:
        labels = ds.read(1)
    for d in ("img_dir", "ann_dir"):
        (root / d).mkdir(parents=True)
    half = SIZE // 2
    for k in range(tiles):
        rows = slice(k * half, (k + 1) * half)
        ann = labels[rows, :half].astype(np.uint8) + 1
        ann[:20, :20] = 0
        with rasterio.open(root / "img_dir" / f"{k}.png", "w", driver="PNG", width=half,
                           height=half, count=3, dtype="uint8") as dst:
            dst.write(image[:, rows, :half])
        with rasterio.open(root / "ann_dir" / f"{k}.png", "w", driver="PNG", width=half,
                           height=half, count=1, dtype="uint8") as dst:
            dst.write(ann, 1)
    return root


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_model_against_a_dataset_folder(land, land_model, tmp_path):
    from glnet.cli import main
    from glnet.config import SegmentOptions
    from glnet.evaluate.model import evaluate_model_on_dataset
    from glnet.segment.scene import segment

    out, _, _ = land
    folder = _loveda_folder(tmp_path / "loveda", out)
    model = tmp_path / "loveda.glnet"
    assert main(["train", "--dataset", str(folder), "-o", str(model), *TINY_TRAIN]) == 0
    res = evaluate_model_on_dataset(model, folder, segment_options=SegmentOptions(threads=1))
    # The same as segmenting each tile and counting its annotation (1..7 -> 0..6, 0 not counted).
    expected = ConfusionMatrix(7)
    for k in range(2):
        segment(folder / "img_dir" / f"{k}.png", model, tmp_path / f"m{k}.tif",
                SegmentOptions(threads=1, overviews=False))
        with rasterio.open(tmp_path / f"m{k}.tif") as ds:
            pred = ds.read(1)
        with rasterio.open(folder / "ann_dir" / f"{k}.png") as ds:
            ann = ds.read(1).astype(np.int64)
        expected.update(pred, ann - 1, (ann > 0) & (pred != 255))
    assert np.array_equal(res.matrix.matrix, expected.matrix)
    assert res.matrix.total == 2 * (SIZE // 2) ** 2 - 2 * 400 and res.skipped_pixels == 800
    assert res.class_names[:3] == ["background", "building", "road"]
    # A model with other classes is refused before anything is segmented.
    with pytest.raises(GlnetError, match=r"loveda: its classes \(background, building.*\) are "
                                         r"not the model's \(grassland, agriculture"):
        evaluate_model_on_dataset(land_model, folder)


def test_model_bad_inputs(land, land_model, tmp_path):
    out, labels, profile = land
    bad = labels.copy()
    bad[5, 5] = 9
    ref = _write(tmp_path / "nine.tif", bad, profile)
    t0 = time.monotonic()
    res = subprocess.run([GLNET, "evaluate", "-m", str(land_model), str(out / "scene.tif"),
                          str(ref)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert res.stderr.strip() == (
        f"glnet evaluate: error: {ref}: reference has class values 9 that the model does not "
        "have (its classes: 0 grassland, 1 agriculture, 2 barren, 3 forest, 4 water, 5 road)")
    assert time.monotonic() - t0 < 60  # refused before segmenting
    # polygons with a class value the model lacks: found once they are read
    poly = tmp_path / "poly.gpkg"
    with fiona.open(poly, "w", driver="GPKG", crs=profile["crs"].to_wkt(),
                    schema={"geometry": "Polygon", "properties": {"class_id": "int"}}) as dst:
        t = profile["transform"]
        x, y = t.c + 10, t.f - 10
        dst.write({"geometry": {"type": "Polygon", "coordinates": [[(x, y), (x + 50, y),
                                                                     (x + 50, y - 50), (x, y)]]},
                   "properties": {"class_id": 7}})
    from glnet.evaluate.model import evaluate_model

    with pytest.raises(GlnetError, match="poly.gpkg: reference has class values 7 that the model"):
        evaluate_model(land_model, out / "scene.tif", poly)
    with pytest.raises(GlnetError, match=r"--ignore-classes: 6 not among the model's classes 0\.\.5"):
        evaluate_model(land_model, out / "scene.tif", out / "labels.tif", ignore_classes=[6])
    with pytest.raises(GlnetError, match="missing.tif: file not found"):
        evaluate_model(land_model, tmp_path / "missing.tif", out / "labels.tif")
    # usage errors: exit 2 with the usage line
    for args, text in ((["-m", str(land_model), str(out / "scene.tif")], "give SCENE and REF"),
                       (["--dataset", str(tmp_path)], "--dataset needs a model"),
                       (["-m", str(land_model), "--dataset", str(tmp_path), str(ref)],
                        "give no SCENE or REF"),
                       ([str(ref), str(ref), "--threads", "2"], "--threads applies with -m")):
        res = subprocess.run([GLNET, "evaluate", *args], capture_output=True, text=True, timeout=60)
        assert res.returncode == 2 and text in res.stderr and "usage:" in res.stderr, res.stderr
