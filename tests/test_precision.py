"""Reduced-precision inference (issue 17): ``SegmentOptions.precision``, ``--precision``, and
the "Precision" parameter in the real QGIS.

Real GeoTIFFs, the tiny model trained by ``fixtures_models``, real torch: that the bf16 run
is one is read off the network itself (forward hooks record the dtype every convolution's
output comes out in), not off a timing.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import fixtures_models as fm
import numpy as np
import pytest
import rasterio
import torch
from qgis_support import checkout_qgis
from test_segment import read, write_scene

from glnet.cli import main
from glnet.config import SegmentOptions
from glnet.errors import OptionError
from glnet.nn.precision import cpu_bf16_flags, resolve_precision
from glnet.segment.plan import describe_plan, plan_job
from glnet.segment.scene import segment

OPTS = SegmentOptions(threads=1, overviews=False)
# What "auto" is on this machine's CPU.
AUTO = resolve_precision("auto").name


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> tuple[Path, Path]:
    """A 480 x 640 px landscape of the tiny model's classes and its labels, as GeoTIFFs."""
    folder = tmp_path_factory.mktemp("precision-scene")
    image, labels = fm.landscape(480, 640, seed=5, cell=160)
    path = write_scene(folder / "scene.tif", image, nodata=None)
    ref = write_scene(folder / "labels.tif", labels[None].astype(np.uint8), nodata=255)
    return path, ref


def conv_dtypes(model: torch.nn.Module):
    """A set that fills with the dtypes of every Conv2d output while the hooks are on."""
    seen: set[torch.dtype] = set()
    hooks = [m.register_forward_hook(lambda mod, inp, out: seen.add(out.dtype))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    return seen, hooks


def test_precision_is_checked_where_it_is_defined(tmp_path, capsys):
    with pytest.raises(OptionError) as info:
        SegmentOptions(precision="fp16")
    assert str(info.value) == "precision must be one of fp32, bf16, auto, int8, not 'fp16'"
    with pytest.raises(OptionError, match=r"^precision must be one of fp32, bf16, auto, int8, not 'BF16'$"):
        resolve_precision("BF16")
    assert SegmentOptions().precision == "auto"
    # The command line refuses it in one usage line that names the option and its choices.
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", str(tmp_path / "s.tif"), "-m", str(tmp_path / "m.glnet"),
              "-o", str(tmp_path / "o.tif"), "--precision", "fp16"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "argument --precision: invalid choice: 'fp16' (choose from fp32, bf16, auto, int8)" in err \
        or "argument --precision: invalid choice: 'fp16' (choose from 'fp32', 'bf16', 'auto', 'int8')" \
        in err, err


def test_auto_is_bf16_only_where_the_cpu_has_it(tmp_path):
    with_flags = tmp_path / "amx"
    with_flags.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f amx_bf16 amx_tile\n\n"
                          "processor\t: 1\nflags\t\t: fpu sse avx2 avx512f amx_bf16 amx_tile\n")
    without = tmp_path / "avx2"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw\n")
    assert cpu_bf16_flags(with_flags) == ("amx_bf16",)
    assert cpu_bf16_flags(without) == () == cpu_bf16_flags(tmp_path / "missing")

    native = resolve_precision("auto", "cpu", with_flags)
    assert (native.name, native.native, native.warning) == ("bf16", True, None)
    plain = resolve_precision("auto", "cpu", without)
    assert (plain.name, plain.native, plain.warning) == ("fp32", False, None)
    assert resolve_precision("fp32", "cpu", with_flags).name == "fp32"
    # bf16 asked for without native support: honoured, with a one-line warning.
    emulated = resolve_precision("bf16", "cpu", without)
    assert (emulated.name, emulated.native) == ("bf16", False)
    assert emulated.warning == (
        "precision bf16 asked for, but this CPU (no avx512_bf16 or amx_bf16 flag) has no native "
        "bf16: it is emulated, and likely slower than fp32 (--precision auto or fp32 avoids it)")
    # This machine's "auto" follows its own flags.
    assert AUTO == ("bf16" if cpu_bf16_flags() else "fp32")


def test_bf16_runs_the_network_in_bf16_and_keeps_the_classes(trained, scene, tmp_path):
    model, meta = trained
    path, _ = scene
    masks, dtypes = {}, {}
    for precision in ("fp32", "bf16"):
        seen, hooks = conv_dtypes(model)
        try:
            res = segment(path, trained, tmp_path / f"{precision}.tif",
                          OPTS.replace(precision=precision,
                                       probabilities=tmp_path / f"p_{precision}.tif"))
        finally:
            for h in hooks:
                h.remove()
        assert res.precision == precision and res.windows == 48
        masks[precision], dtypes[precision] = read(tmp_path / f"{precision}.tif")[0], seen
    assert dtypes == {"fp32": {torch.float32}, "bf16": {torch.bfloat16}}
    # The same classes on (almost) every pixel: the scope's bar is 99.5 %.
    agree = (masks["fp32"] == masks["bf16"]).mean()
    assert agree >= 0.995, agree
    # Probabilities are still written from fp32 (percent, 0..100 summing to about 100).
    with rasterio.open(tmp_path / "p_bf16.tif") as ds:
        pct = ds.read().astype(int)
    assert pct.max() <= 100 and np.abs(pct.sum(0) - 100).max() <= 2
    # The plan line names the precision, and "auto" is what the CPU has.
    job = plan_job(path, meta, tmp_path / "plan.tif", replace(OPTS, precision="auto"))
    assert describe_plan(job) == f"plan: 640 x 480 px at 2 m, 48 windows of 112 px, {AUTO}"
    assert job.precision.name == AUTO


def test_the_command_line_option(model_file, scene, tmp_path, capsys):
    path, labels = scene
    for precision in ("bf16", "fp32"):
        out = tmp_path / f"{precision}.tif"
        capsys.readouterr()
        code = main(["--progress", "none", "segment", str(path), "-m", str(model_file), "-o",
                     str(out), "--threads", "1", "--no-overviews", "--precision", precision])
        err = capsys.readouterr().err
        assert code == 0, err
        assert err.splitlines()[0] == f"plan: 640 x 480 px at 2 m, 48 windows of 112 px, {precision}"
        library = segment(path, model_file, tmp_path / f"lib_{precision}.tif",
                          OPTS.replace(precision=precision))
        assert np.array_equal(read(out)[0], read(library.output)[0])
    # glnet evaluate -m segments too, and takes the option; without -m it is a usage error.
    capsys.readouterr()
    assert main(["--progress", "none", "evaluate", "-m", str(model_file), str(path), str(labels),
                 "--threads", "1", "--precision", "bf16", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["miou"] > 0.5
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(tmp_path / "fp32.tif"), str(labels), "--precision", "bf16"])
    assert exit_info.value.code == 2
    assert "--precision applies with -m MODEL only" in capsys.readouterr().err


@pytest.mark.qgis
def test_the_qgis_precision_parameter_reaches_the_engine(tmp_path_factory, model_file, scene,
                                                         tmp_path):
    qgis = checkout_qgis(tmp_path_factory)
    path, _ = scene
    out = tmp_path / "qgis" / "mask.tif"
    out.parent.mkdir()
    proc = qgis.algorithm("glnet:segmentlandcover", f"INPUT={path}", f"MODEL={model_file}",
                          f"OUTPUT={out}", "PRECISION=2", "THREADS=1", "OVERVIEWS=false")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    info = json.loads(proc.stdout)["log"]["info"]
    assert "plan: 640 x 480 px at 2 m, 48 windows of 112 px, bf16" in info, info
    if not cpu_bf16_flags():
        # qgis_process --json lists the warnings apart (its JSON escapes the quotes)
        warnings = json.loads(proc.stdout)["log"].get("warning", [])
        assert any('"Precision" Automatic or fp32 avoids it' in w for w in warnings), log
    library = segment(path, model_file, tmp_path / "lib.tif", OPTS.replace(precision="bf16"))
    assert np.array_equal(read(out)[0], read(library.output)[0])
