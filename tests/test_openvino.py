"""The OpenVINO backend (issue 17): ``SegmentOptions.backend``, ``--backend``, ``glnet.nn.openvino``.

Real OpenVINO, real torch, real GeoTIFFs: the branch networks are converted
from the torch modules and their masks compared with the torch path's, pixel
by pixel; the cache beside the model file is read back by a second run.
"""

from __future__ import annotations

from pathlib import Path

import fixtures_models as fm
import numpy as np
import pytest
import rasterio
import torch
from test_segment import read, write_scene

from glnet.cli import main
from glnet.config import SegmentOptions
from glnet.errors import Cancelled, OptionError
from glnet.nn.glnet import GLNet
from glnet.nn.predict import predict_window

pytest.importorskip("openvino")

from glnet.nn.openvino import OpenVINONetwork, cache_folder  # noqa: E402

OPTS = SegmentOptions(threads=1, overviews=False, precision="fp32")


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    """A 480 x 640 px landscape of the tiny model's classes, as a GeoTIFF."""
    folder = tmp_path_factory.mktemp("openvino-scene")
    image, _ = fm.landscape(480, 640, seed=5, cell=160)
    return write_scene(folder / "scene.tif", image, nodata=None)


def test_the_option_is_checked_where_it_is_defined(tmp_path, capsys):
    with pytest.raises(OptionError, match=r"^backend must be one of torch, openvino, not 'ov'$"):
        SegmentOptions(backend="ov")
    with pytest.raises(OptionError, match=r"^backend openvino runs on the CPU: device 'cuda' "
                                          r"needs backend torch$"):
        SegmentOptions(backend="openvino", device="cuda")
    assert SegmentOptions().backend == "torch"
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", str(tmp_path / "s.tif"), "-m", str(tmp_path / "m.glnet"),
              "-o", str(tmp_path / "o.tif"), "--backend", "onnx"])
    assert exit_info.value.code == 2
    assert "argument --backend: invalid choice: 'onnx'" in capsys.readouterr().err


@pytest.mark.parametrize("mode", [1, 2, 3])
def test_every_mode_gives_the_torch_probabilities(mode, tmp_path):
    # Random weights with a context branch: every branch call of predict_window, mode 3 too.
    torch.manual_seed(mode)
    net = GLNet(fm.TINY, context_branch=True).eval()
    window = torch.randn(1, 3, 112, 136)
    ref = predict_window(net, window, mode=mode, sub_batch=2, smooth_patches=True)
    ov_net = OpenVINONetwork(net, threads=1, cache=tmp_path)
    got = predict_window(ov_net, window, mode=mode, sub_batch=2, smooth_patches=True)
    assert got.probabilities.shape == ref.probabilities.shape == (3, 112, 136)
    assert (got.probabilities - ref.probabilities).abs().max().item() < 1e-4
    assert (got.patches, got.refined) == (ref.patches, ref.refined)


def test_segment_matches_torch_and_reuses_its_cache(model_file, scene, tmp_path):
    from glnet.segment.scene import segment

    ref = segment(scene, model_file, tmp_path / "torch.tif", OPTS)
    cache = cache_folder(model_file)
    assert cache == model_file.with_name("tiny.glnet.openvino")
    fractions: list[float] = []
    got = segment(scene, model_file, tmp_path / "ov.tif", OPTS.replace(backend="openvino"),
                  progress=lambda f, *msg: fractions.append(f))
    mask_t, prof_t, _ = read(ref.output)
    mask_o, prof_o, _ = read(got.output)
    # Same georeferencing, the same classes on (all but a few tied) pixels.
    assert (prof_o["crs"], prof_o["transform"]) == (prof_t["crs"], prof_t["transform"])
    assert (mask_o == mask_t).mean() >= 0.9999
    assert got.windows == ref.windows == 48
    assert fractions[-1] == 1.0 and all(b >= a for a, b in zip(fractions, fractions[1:]))
    # Converted once, kept beside the model: a second run reads the same files.
    saved = sorted(cache.rglob("*.xml"))
    assert saved and all(p.with_suffix(".bin").is_file() for p in saved)
    stamps = {p: p.stat().st_mtime_ns for p in saved}
    again = segment(scene, model_file, tmp_path / "ov2.tif", OPTS.replace(backend="openvino"))
    assert np.array_equal(read(again.output)[0], mask_o)
    assert {p: p.stat().st_mtime_ns for p in sorted(cache.rglob("*.xml"))} == stamps


def test_cancelling_leaves_nothing(model_file, scene, tmp_path):
    from glnet.segment.scene import segment

    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 20

    with pytest.raises(Cancelled):
        segment(scene, model_file, tmp_path / "mask.tif", OPTS.replace(backend="openvino"),
                cancel=cancel)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_command_line_option(model_file, scene, tmp_path, capsys):
    out = tmp_path / "cli.tif"
    code = main(["--progress", "none", "segment", str(scene), "-m", str(model_file), "-o",
                 str(out), "--threads", "1", "--no-overviews", "--precision", "fp32",
                 "--backend", "openvino"])
    assert code == 0, capsys.readouterr().err
    with rasterio.open(out) as ds:
        assert ds.crs.to_epsg() == 32633 and ds.count == 1
        counts = np.bincount(ds.read(1).ravel(), minlength=3)
    # The landscape's three classes, each on a real share of the scene.
    assert (counts[:3] > 0.05 * counts.sum()).all(), counts


@pytest.mark.qgis
def test_the_qgis_runtime_parameter_reaches_the_engine(tmp_path_factory, model_file, scene,
                                                       tmp_path):
    from qgis_support import checkout_qgis

    from glnet.segment.scene import segment

    qgis = checkout_qgis(tmp_path_factory)
    out = tmp_path / "qgis" / "mask.tif"
    out.parent.mkdir()
    proc = qgis.algorithm("glnet:segmentlandcover", f"INPUT={scene}", f"MODEL={model_file}",
                          f"OUTPUT={out}", "BACKEND=1", "PRECISION=1", "THREADS=1",
                          "OVERVIEWS=false")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    library = segment(scene, model_file, tmp_path / "lib.tif", OPTS.replace(backend="openvino"))
    assert np.array_equal(read(out)[0], read(library.output)[0])
