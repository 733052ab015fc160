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


def test_every_mode_gives_the_torch_probabilities(tmp_path):
    # Random weights with a context branch: every branch call of predict_window, mode 3 too.
    torch.manual_seed(1)
    net = GLNet(fm.TINY, context_branch=True).eval()
    window = torch.randn(1, 3, 112, 136)
    ov_net = OpenVINONetwork(net, threads=1, cache=tmp_path)
    for mode in (1, 2, 3):
        ref = predict_window(net, window, mode=mode, sub_batch=2, smooth_patches=True)
        got = predict_window(ov_net, window, mode=mode, sub_batch=2, smooth_patches=True)
        assert got.probabilities.shape == ref.probabilities.shape == (3, 112, 136)
        assert (got.probabilities - ref.probabilities).abs().max().item() < 1e-4, mode
        assert (got.patches, got.refined) == (ref.patches, ref.refined)
    # Context, local and refined branches, each converted once.
    assert ov_net.converted == 3


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


@pytest.fixture(scope="module")
def quantized(model_file, scene, tmp_path_factory):
    """A copy of the tiny model with int8 branches calibrated on the scene, and the result."""
    pytest.importorskip("nncf")
    import shutil

    from glnet.config import QuantizeOptions
    from glnet.segment.quantize import quantize

    path = tmp_path_factory.mktemp("int8") / "tiny.glnet"
    shutil.copy(model_file, path)
    steps: list[float] = []
    result = quantize(path, scene, QuantizeOptions(windows=4, threads=1),
                      progress=lambda f, *msg: steps.append(f))
    assert steps[0] == 0.0 and steps[-1] == 1.0
    return path, result


def test_int8_keeps_the_classes_of_fp32(quantized, scene, tmp_path):
    import json

    from glnet.segment.scene import segment

    path, result = quantized
    # Measured by quantize itself on held-out windows, and kept with a record.
    assert result.kept and result.agreement >= 0.99 and result.held_out == 2
    assert result.windows == 4 and result.pixels == 2 * 112 * 112
    record = json.loads((cache_folder(path) / "int8.json").read_text())
    assert record["agreement"] == result.agreement and record["windows"] == 4
    assert record["branches"] == result.branches == ["global 3 x 64 x 64", "local 3 x 64 x 64"]
    assert len(list(cache_folder(path).rglob("int8-*.xml"))) == 2
    opts = OPTS.replace(backend="openvino")
    fp32 = segment(scene, path, tmp_path / "fp32.tif", opts)
    int8 = segment(scene, path, tmp_path / "int8.tif", opts.replace(precision="int8"))
    assert int8.precision == "int8"
    a, b = read(fp32.output)[0], read(int8.output)[0]
    assert (a == b).mean() >= 0.99, (a == b).mean()
    assert read(int8.output)[1]["crs"] == read(fp32.output)[1]["crs"]


def test_int8_is_refused_where_it_cannot_run(model_file, quantized, scene, tmp_path):
    from glnet.errors import GlnetError
    from glnet.modelfile import save_model
    from glnet.segment.scene import segment

    with pytest.raises(OptionError, match=r"^precision int8 runs on backend openvino"):
        SegmentOptions(precision="int8")
    # Not quantised: one line naming the model and what to run.
    with pytest.raises(GlnetError, match=r"tiny\.glnet: no int8 branches beside it .*"
                                         r"run glnet quantize tiny\.glnet SCENE first"):
        segment(scene, model_file, tmp_path / "m.tif", OPTS.replace(backend="openvino",
                                                                   precision="int8"))
    # Other weights saved over a quantised model: its int8 branches are not used.
    path, _ = quantized
    other = tmp_path / "other" / "tiny.glnet"
    other.parent.mkdir()
    torch.manual_seed(7)
    from glnet.modelfile import read_metadata

    save_model(GLNet(fm.TINY).eval(), read_metadata(path), other)
    import shutil

    shutil.copytree(cache_folder(path), cache_folder(other))
    with pytest.raises(GlnetError, match=r"int8\.json: its int8 branches were made from other "
                                         r"weights than this model's"):
        segment(scene, other, tmp_path / "o.tif", OPTS.replace(backend="openvino",
                                                              precision="int8"))
    assert not (tmp_path / "o.tif").exists() and not (tmp_path / "m.tif").exists()


def test_int8_that_changes_classes_is_not_kept(scene, tmp_path, capsys):
    pytest.importorskip("nncf")
    from glnet.modelfile import default_meta, save_model

    # Random weights: near-flat class scores, which int8 reorders on many pixels.
    torch.manual_seed(3)
    path = save_model(GLNet(fm.TINY).eval(), default_meta(fm.TINY, dtype="uint8",
                                                           mean=(127.0,) * 3, std=(50.0,) * 3), tmp_path / "r.glnet")
    code = main(["--progress", "none", "quantize", str(path), str(scene), "--threads", "1",
                 "--windows", "1", "--held-out", "1", "--min-agreement", "0.9999"])
    err = capsys.readouterr().err
    assert code == 1
    assert "r.glnet: int8 keeps the class of" in err and "no int8 branches kept" in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (cache_folder(path) / "int8.json").exists()
    assert not list(cache_folder(path).rglob("int8-*.xml"))


@pytest.mark.qgis
def test_the_qgis_quantize_algorithm_and_int8(tmp_path_factory, model_file, scene, tmp_path):
    pytest.importorskip("nncf")
    import json
    import shutil

    from qgis_support import checkout_qgis

    from glnet.segment.scene import segment

    qgis = checkout_qgis(tmp_path_factory)
    model = tmp_path / "q" / "tiny.glnet"
    model.parent.mkdir()
    shutil.copy(model_file, model)
    proc = qgis.algorithm("glnet:quantize", f"MODEL={model}", f"INPUT={scene}", "WINDOWS=2",
                          "HELD_OUT=1", "THREADS=1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(proc.stdout)["results"]
    assert results["FOLDER"] == str(cache_folder(model))
    assert 0.99 <= results["AGREEMENT"] <= 1.0
    out = tmp_path / "int8.tif"
    proc = qgis.algorithm("glnet:segmentlandcover", f"INPUT={scene}", f"MODEL={model}",
                          f"OUTPUT={out}", "BACKEND=1", "PRECISION=3", "THREADS=1",
                          "OVERVIEWS=false")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    library = segment(scene, model, tmp_path / "lib.tif",
                      OPTS.replace(backend="openvino", precision="int8"))
    assert np.array_equal(read(out)[0], read(library.output)[0])
