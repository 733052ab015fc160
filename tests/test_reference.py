"""The `official` preset reproduces the released GLNet's outputs.

Weights are filled by the formula of shared/glnet-reference/README.md, converted
with the code path of `glnet import-official`, and every output stored in
reference.npz is matched within the README's tolerance. Salts, phases and patch
coordinates are read from the file, so the test runs unchanged on another
reference file made the same way.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from glnet.nn.official import model_from_official
from glnet.nn.patches import PatchGrid
from glnet.nn.sharing import LocalToGlobal, crop_pyramid, crop_resized

ROOT = Path(__file__).resolve().parents[1]
REF_DIR = Path(os.environ.get("GLNET_REFERENCE_DIR", ROOT.parent / "shared" / "glnet-reference"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (REF_DIR / "reference.npz").exists(),
                       reason=f"no reference outputs in {REF_DIR}"),
]


def fill(key: str, shape: list[int], salt: float) -> torch.Tensor:
    n = math.prod(shape)
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    idx = np.arange(n, dtype=np.float64)
    h = (zlib.crc32(key.encode("utf-8")) % 1000) / 1000
    base = np.sin(0.37 * idx + 2 * np.pi * h + salt)
    if key.endswith("running_var"):
        v = 1 + 0.25 * (base + 1)
    elif key.endswith("running_mean"):
        v = 0.1 * base
    elif len(shape) == 1 and key.endswith("weight"):
        v = 1 + 0.1 * base
    elif len(shape) == 1 and key.endswith("bias"):
        v = 0.05 * base
    else:
        v = base * 2 / math.sqrt(math.prod(shape[1:]))
    return torch.from_numpy(v.reshape(shape).astype(np.float32))


def official_state(salt: float) -> dict[str, torch.Tensor]:
    params = json.loads((REF_DIR / "official_state_dict.json").read_text())["params"]
    # Keys as the released checkpoints carry them, through nn.DataParallel.
    return {"module." + p["key"]: fill(p["key"], p["shape"], salt) for p in params}


def image(b: int, c: int, h: int, w: int, phase: float) -> torch.Tensor:
    bb, cc, i, j = np.meshgrid(np.arange(b), np.arange(c), np.arange(h), np.arange(w), indexing="ij")
    x = 0.5 + 0.5 * np.sin(0.05 * i + 0.07 * j + cc + 0.3 * bb + phase)
    return torch.from_numpy(x.astype(np.float32))


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(REF_DIR / "reference.npz"))


@pytest.fixture(scope="module")
def inputs(ref):
    grid = PatchGrid.for_window(2448, 2448, 508, 50)
    np.testing.assert_allclose(grid.fractions, ref["coords"], atol=1e-12)
    img_g = image(1, 3, 508, 508, float(ref["phase_global"]))
    patches = image(36, 3, 508, 508, float(ref["phase_patches"]))
    return grid, img_g, patches


def assert_close(ours: torch.Tensor, expected: np.ndarray, name: str) -> None:
    ours = ours.detach().numpy()
    assert ours.shape == expected.shape, name
    tol = 1e-4 * max(1.0, float(np.abs(expected).max()))
    err = float(np.abs(ours - expected).max())
    assert err <= tol, f"{name}: max error {err:.3g} > {tol:.3g}"


@torch.no_grad()
def test_modes_1_and_2(ref, inputs):
    grid, img_g, patches = inputs
    s12 = official_state(float(ref["salt_stage12"]))
    model, stages = model_from_official(s12, s12, source="formula")
    assert stages == (1, 2)
    model.eval()

    glob = model.global_pyramid(img_g)
    assert_close(glob.logits, ref["mode1_global_logits"], "mode1_global_logits")
    assert_close(glob.logits, ref["mode2_global_logits"], "mode2_global_logits")

    pick = ref["pick"]
    fr = grid.fractions[pick]
    local = model.local_pyramid(patches[pick], crop_pyramid(glob, fr, grid.ratio))
    g2l = crop_resized(glob.ps3, fr, grid.ratio, tuple(local.ps3.shape[-2:]))
    assert_close(local.logits, ref["mode2_local_logits"], "mode2_local_logits")
    assert_close(model.aggregate(local.ps3, g2l), ref["mode2_agg_logits"], "mode2_agg_logits")
    mse = float(F.mse_loss(local.ps3, g2l))
    assert abs(mse - float(ref["mode2_fmreg_mse"])) <= 1e-4 * max(1.0, abs(float(ref["mode2_fmreg_mse"])))


@torch.no_grad()
def test_mode_3(ref, inputs):
    grid, img_g, patches = inputs
    s12 = official_state(float(ref["salt_stage12"]))
    s3 = official_state(float(ref["salt_stage3"]))
    model, stages = model_from_official(s12, None, s3, source="formula")
    assert stages == (1, 2, 3) and model.has_context_branch
    del s12, s3
    model.eval()

    context = model.context_pyramid(img_g)
    merger = LocalToGlobal(context, grid)
    last_maps = []
    for start in range(0, len(grid), 6):
        index = slice(start, start + 6)
        local = model.local_pyramid(patches[index], crop_pyramid(context, grid.fractions[index], grid.ratio))
        merger.add(local, index)
        last_maps.append(local.ps3)
    refined = model.refined_pyramid(img_g, merger.result())
    assert_close(refined.logits, ref["mode3_global_logits"], "mode3_global_logits")

    pick = ref["pick"]
    fl = torch.cat(last_maps)[pick]
    fg = crop_resized(refined.ps3, grid.fractions[pick], grid.ratio, tuple(fl.shape[-2:]))
    assert_close(model.aggregate(fl, fg), ref["mode3_agg_logits"], "mode3_agg_logits")


def test_import_official_command(ref, inputs, tmp_path, capsys):
    """`glnet import-official` on released-style checkpoints gives the reference outputs."""
    from glnet.cli import main
    from glnet.modelfile import load_model

    grid, img_g, patches = inputs
    s12 = official_state(float(ref["salt_stage12"]))
    torch.save(s12, tmp_path / "G.pth")
    torch.save(s12, tmp_path / "G2L.pth")
    del s12
    out = tmp_path / "deepglobe.glnet"
    assert main(["import-official", str(tmp_path / "G.pth"), str(tmp_path / "G2L.pth"),
                 "-o", str(out)]) == 0
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "agriculture" in text and "stages done:  1, 2" in text and "79,307,263" in text
    # Refuses to overwrite, and names the file.
    assert main(["import-official", str(tmp_path / "G.pth"), str(tmp_path / "G2L.pth"),
                 "-o", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    model, meta = load_model(out)
    assert meta.stages == (1, 2) and meta.class_names[2] == "agriculture"
    with torch.no_grad():
        assert_close(model.global_pyramid(img_g).logits, ref["mode1_global_logits"], "imported mode 1")
