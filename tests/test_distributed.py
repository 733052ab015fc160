"""Segmentation on Dask distributed: strips, LocalCluster identity, a killed worker, the CLI.

Every comparison is against ``segment`` in this process with the same torch
thread count (one), pixel for pixel.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import fixtures_models as fm
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from glnet.config import SegmentOptions
from glnet.errors import GlnetError
from glnet.raster.windows import AxisPlan, strips
from glnet.segment.plan import plan_job
from glnet.segment.scene import segment

distributed = pytest.importorskip("distributed")

from glnet.segment.distributed import connect, output_paths, segment_scenes  # noqa: E402

OPTS = SegmentOptions(threads=1)


def write_scene(path: Path, height: int, width: int, seed: int, nodata_rows: int = 0) -> Path:
    image, _ = fm.landscape(height, width, seed=seed)
    if nodata_rows:
        image[:, :nodata_rows] = 0
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=3,
                       dtype="uint8", crs="EPSG:32633", nodata=0 if nodata_rows else None,
                       transform=from_origin(500000 + seed, 4100000, 1.0, 1.0)) as ds:
        ds.write(image)
    return path


def read(path: Path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds.crs, ds.transform


@pytest.fixture(scope="module")
def client():
    with connect("local:2", threads_per_worker=1) as c:
        yield c


@pytest.mark.parametrize("size,count", [(100, 3), (1000, 1), (1000, 4), (2301, 7), (5000, 40)])
def test_strips_partition_rows_and_carry_their_windows(size, count):
    rows = AxisPlan.build(size, 300, 60, 32)
    cut = strips(rows, count)
    assert cut[0].lo == 0 and cut[-1].hi == size
    assert all(a.hi == b.lo and a.lo < a.hi for a, b in zip(cut, cut[1:]))
    assert len(cut) <= max(count, 1)
    for s in cut:  # each row segment of a strip gets weight only from the strip's windows
        for seg in rows.segments:
            if s.lo <= seg.lo < s.hi:
                assert seg.hi <= s.hi and s.first <= min(seg.owners) <= max(seg.owners) <= s.last
    # one extra row of windows per cut, no more
    assert sum(s.last - s.first + 1 for s in cut) <= len(rows) + len(cut) - 1


def test_local_cluster_equals_single_process(client, model_file, tmp_path):
    scene = write_scene(tmp_path / "big.tif", 700, 520, seed=5, nodata_rows=40)
    single = segment(scene, model_file, tmp_path / "single.tif", OPTS)
    out = tmp_path / "out"
    out.mkdir()
    steps = []
    [res] = segment_scenes([scene], model_file, [out / "big.tif"], OPTS, client,
                           progress=lambda f, m=None: steps.append(f), strips_per_worker=3)
    a, crs_a, t_a = read(tmp_path / "single.tif")
    b, crs_b, t_b = read(out / "big.tif")
    assert np.array_equal(a, b)
    assert crs_a == crs_b and t_a == t_b
    assert (b[:40] == 255).all() and np.unique(b[40:]).size >= 2
    assert res.class_pixels == single.class_pixels and res.valid_pixels == single.valid_pixels
    assert steps == sorted(steps) and steps[-1] == 1.0
    # only the mask and its legend: the parts folder is gone
    assert sorted(p.name for p in out.iterdir()) == ["big.qml", "big.tif"]


def test_collection_of_three_scenes_through_the_cli(model_file, tmp_path):
    """`glnet segment A B C -o DIR --scheduler local:2`, one scene read through /vsizip/."""
    a = write_scene(tmp_path / "a.tif", 420, 380, seed=1)
    b = write_scene(tmp_path / "b.tif", 260, 300, seed=2, nodata_rows=30)
    c = write_scene(tmp_path / "c.tif", 330, 250, seed=3)
    archive = tmp_path / "c.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(c, "c.tif")
    c.unlink()
    singles = {}
    for name, scene in (("a", a), ("b", b), ("c", f"/vsizip/{archive}/c.tif")):
        segment(scene, model_file, tmp_path / f"single_{name}.tif", OPTS)
        singles[name] = read(tmp_path / f"single_{name}.tif")
    out = tmp_path / "masks"
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "glnet.cli", "--progress", "none", "segment", str(a), str(b),
         f"/vsizip/{archive}/c.tif", "-m", str(model_file), "-o", str(out),
         "--scheduler", "local:2", "--threads", "1"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("wrote ") == 3
    for name in "abc":
        got = read(out / f"{name}.tif")
        assert np.array_equal(got[0], singles[name][0]), name
        assert got[1] == singles[name][1] and got[2] == singles[name][2]


def test_killed_worker_is_replaced_and_output_identical(client, model_file, tmp_path):
    scene = write_scene(tmp_path / "k.tif", 900, 420, seed=7)
    segment(scene, model_file, tmp_path / "single.tif", OPTS)
    out = tmp_path / "out"
    out.mkdir()
    killed = []

    def kill_a_busy_worker(fraction, message=None):
        if killed or fraction <= 0:
            return
        busy = [addr for addr, keys in client.processing().items() if keys]
        if busy:
            pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    segment_scenes([scene], model_file, [out / "k.tif"], OPTS, client,
                   progress=kill_a_busy_worker, strips_per_worker=4)
    assert killed, "no worker was busy when the first strip finished"
    assert np.array_equal(read(out / "k.tif")[0], read(tmp_path / "single.tif")[0])
    assert sorted(p.name for p in out.iterdir()) == ["k.qml", "k.tif"]


def test_bad_collections_are_clear_errors(model_file, tmp_path):
    a = write_scene(tmp_path / "a.tif", 120, 120, seed=1)
    sub = tmp_path / "sub"
    sub.mkdir()
    b = write_scene(sub / "a.tif", 120, 120, seed=2)
    with pytest.raises(GlnetError, match="must be an existing folder"):
        output_paths([a, b], tmp_path / "nowhere")
    with pytest.raises(GlnetError, match="would both be written"):
        output_paths([a, b], tmp_path)
    proc = subprocess.run([sys.executable, "-m", "glnet.cli", "segment", str(a), "-m",
                           str(model_file), "-o", str(tmp_path / "x.tif"), "--scheduler",
                           "local:two"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("glnet segment: error: --scheduler local:two: expected "
                                   "local:N with N a number of workers, or a scheduler address")
    assert not (tmp_path / "x.tif").exists()


def test_strip_job_pickles_with_its_areas_of_interest(model_file, tmp_path):
    import pickle

    from glnet.modelfile import read_metadata

    scene = write_scene(tmp_path / "p.tif", 200, 200, seed=4)
    job = plan_job(scene, read_metadata(model_file), tmp_path / "m.tif", OPTS)
    again = pickle.loads(pickle.dumps(job))
    assert again.grid == job.grid and again.plan.bands == job.plan.bands


def test_openvino_backend_on_the_workers(client, model_file, tmp_path):
    pytest.importorskip("openvino")
    scene = write_scene(tmp_path / "ov.tif", 400, 300, seed=6)
    opts = OPTS.replace(backend="openvino", precision="fp32")
    single = segment(scene, model_file, tmp_path / "single.tif", opts)
    out = tmp_path / "out"
    out.mkdir()
    [res] = segment_scenes([scene], model_file, [out / "ov.tif"], opts, client,
                           strips_per_worker=2)
    a, crs_a, t_a = read(tmp_path / "single.tif")
    b, crs_b, t_b = read(out / "ov.tif")
    # Each worker's branches come from the cache beside the model: the same masks.
    assert np.array_equal(a, b) and crs_a == crs_b and t_a == t_b
    assert res.class_pixels == single.class_pixels
