"""``glnet:segmentlandcover`` in the real QGIS: the plan reaches the log before any window,
and a resampling factor beyond 4x is refused unless "Resample even by more than 4x" is on."""

from __future__ import annotations

import json

import pytest
from qgis_support import Qgis, checkout_qgis
from test_segment_plan import write_scene

pytestmark = pytest.mark.qgis


@pytest.fixture(scope="module")
def qgis(tmp_path_factory) -> Qgis:
    return checkout_qgis(tmp_path_factory)


def test_the_plan_is_logged_and_a_5x_factor_needs_forcing(qgis, tmp_path):
    from glnet.config import NetConfig
    from glnet.modelfile import default_meta, save_model
    from glnet.nn.glnet import GLNet
    from glnet.nn.precision import DEFAULT_PRECISION, resolve_precision

    cfg = NetConfig(backbone="resnet18", in_channels=3, num_classes=4, fpn_channels=16,
                    smooth_channels=8, fuse_kernel=3, window_size=192, global_size=96,
                    patch_size=96, min_overlap=16)
    model = save_model(GLNet(cfg), default_meta(cfg, stages=(1,), resolution=0.5),
                       tmp_path / "m.glnet")
    scene = write_scene(tmp_path / "coarse.tif", 64, 2.5)
    out = tmp_path / "out" / "mask.tif"
    out.parent.mkdir()
    params = [f"INPUT={scene}", f"MODEL={model}", f"OUTPUT={out}", "MODE=1", "OVERVIEWS=false"]

    proc = qgis.algorithm("glnet:segmentlandcover", *params)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0 and '"results"' not in proc.stdout, log
    assert ("coarse.tif: 2.5 m pixels resampled to the model's 0.5 m is 5x (more than 4x "
            'either way): 320 x 320 px in 4 windows of 192 px; give "Resample to this '
            'resolution" M') in log, log
    assert 'turning on "Resample even by more than 4x" to run it anyway' in log
    assert "Traceback" not in log
    assert list(out.parent.iterdir()) == []

    proc = qgis.algorithm("glnet:segmentlandcover", *params, "FORCE_RESAMPLE=true")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    # qgis_process --json gathers the log by kind: the order of the information lines is kept.
    info, warnings = (json.loads(proc.stdout)["log"][kind] for kind in ("info", "warning"))
    auto = resolve_precision(DEFAULT_PRECISION).name  # the plan line ends with the precision used
    plan = f"plan: 320 x 320 px at 0.5 m (resampled 5x from 2.5 m), 4 windows of 192 px, {auto}"
    assert plan in info and info.index(plan) < next(
        i for i, line in enumerate(info) if line.startswith("segmenting")), info
    assert "glnet segment: warning: scene resolution 2.5 x 2.5 m resampled to the model's 0.5 m " \
        "and the mask back" in warnings
    assert "--force-resample" in log and out.exists()
