"""The engine's contract with the plugin (glnet.contract): what one side writes the other reads."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from glnet import contract
from glnet.cli import main
from glnet.contract import ClassInfo

ROOT = Path(__file__).resolve().parents[1]
CLASSES = [ClassInfo(0, "water", (31, 120, 180)), ClassInfo(1, 'forest "wet" & <dry>', (0, 128, 0)),
           ClassInfo(2, "bâti", (255, 0, 0))]


def test_class_tag_round_trip():
    text = contract.classes_json(CLASSES)
    assert contract.parse_classes(text) == CLASSES
    assert json.loads(text)[1] == {"value": 1, "name": 'forest "wet" & <dry>', "color": [0, 128, 0]}


@pytest.mark.parametrize("text,said", [("not json", "Expecting value"),
                                       ('[{"name": "x", "color": [1, 2, 3]}]', "'value'"),
                                       ('[{"value": 0, "name": "x", "color": 7}]', "not iterable"),
                                       ("5", "not iterable")])
def test_a_bad_class_tag_is_a_value_error_saying_what_failed(text, said):
    with pytest.raises(ValueError, match=said):
        contract.parse_classes(text)


def test_styles_take_their_entries_from_the_legend():
    legend = contract.legend(CLASSES)
    assert legend[0] == (0, "water", (31, 120, 180, 255))
    mask = contract.mask_qml(CLASSES)
    polygons = contract.category_qml(CLASSES)
    assert f'opacity="{contract.MASK_OPACITY:g}"' in mask
    assert """label='forest "wet" &amp; &lt;dry&gt;'""" in mask
    for value, _, (r, g, b, a) in legend:
        assert f'value="{value}" alpha="{a}" color="#{r:02x}{g:02x}{b:02x}"' in mask
        assert f'name="outline_color" value="{r},{g},{b},{a}"' in polygons
    assert f'name="outline_width" value="{contract.OUTLINE_WIDTH_MM:g}"' in polygons


def test_event_lines_round_trip():
    assert contract.parse_event(contract.progress_line(0.123456)) == (0.1235, None)
    assert contract.parse_event(contract.message_line("plan: 3 windows")) == (None, "plan: 3 windows")
    assert contract.parse_event('{"progress": "soon"}') == (None, None)
    for line in ("wrote mask.tif", "[1, 2]", "{not json", contract.error_line("segment", "x")):
        assert contract.parse_event(line) is None


def test_verdict_lines():
    error = contract.error_line("segment", "scene.tif: not a raster")
    assert error == "glnet segment: error: scene.tif: not a raster"
    assert contract.is_verdict(error) and contract.is_verdict(contract.cancelled_line("train"))
    assert not contract.is_verdict(contract.warning_line("segment", "resampled"))
    assert not contract.is_verdict(contract.internal_error_line("segment", "KeyError: 1"))
    assert contract.error_text("segment", error) == "scene.tif: not a raster"
    assert contract.error_text("segment", contract.cancelled_line("segment")) == "cancelled"
    assert contract.error_text("train", error) is None
    assert contract.error_text("segment", "ERROR 1: TIFFReadDirectory") is None


def test_result_line_round_trip(tmp_path):
    line = contract.result_line({"output": tmp_path / "m.glnet", "miou": math.nan,
                                 "shape": (2, 3), "counts": {1: np.int64(5)}}, steps=4)
    assert "\n" not in line
    assert contract.parse_result(line) == {"output": str(tmp_path / "m.glnet"), "miou": None,
                                           "shape": [2, 3], "counts": {"1": 5}, "steps": 4}
    for other in ("wrote m.glnet", "[1]", "{", ""):
        assert contract.parse_result(other) is None


def test_temporary_names_are_recognised_and_user_files_are_not(tmp_path):
    out = tmp_path / "mask.tif"
    pattern = contract.temp_pattern(out.name)
    for suffix in contract.TEMP_SUFFIXES:
        made = contract.new_temp(out, suffix, folder=suffix in (".parts", ".work"))
        assert made.parent == tmp_path and made.name.startswith(contract.temp_prefix(out))
        assert pattern.match(made.name), made.name
        assert pattern.match(made.name + ".aux.xml") and pattern.match(made.name + ".ovr")
    for name in ("mask.tif", ".mask.tif", ".mask.tif.notes", ".mask.tif.abc.part",
                 ".other.tif.abcd_123.part", "x.mask.tif.abcd_123.part", ".mask.tif.my notes",
                 ".mask.tif.glnet-work", ".mask.tif.abcd1234.part.bak"):
        assert not pattern.match(name), name
    # Sidecars: the checkpoint of a model, the style of a mask.
    assert not pattern.match(".mask.qml.abcd1234.part")
    assert contract.temp_pattern(out.name, sidecars=True).match(".mask.qml.abcd1234.part")
    assert contract.temp_pattern("m.glnet", sidecars=True).match(".m.glnet.ckpt.abcd1234.part")
    with pytest.raises(ValueError):
        contract.new_temp(out, ".tmp")


def test_torch_free_modules_import_without_torch_or_numpy():
    probe = (
        "import importlib, sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'numpy', 'rasterio', 'fiona'):\n"
        "            raise ModuleNotFoundError(f'blocked: {name}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from glnet import contract\n"
        "for name in contract.TORCH_FREE_MODULES:\n"
        "    importlib.import_module(f'glnet.{name}')\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('glnet.'))))\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert set(proc.stdout.split()) == {f"glnet.{m}" for m in contract.TORCH_FREE_MODULES}


def _write_pair(folder: Path, size: int = 128) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    lab = np.zeros((size, size), np.uint8)
    lab[:, size // 2:] = 1
    img = np.stack([(lab * 90 + rng.integers(0, 40, lab.shape)) for _ in range(3)]).astype(np.uint8)
    prof = dict(driver="GTiff", width=size, height=size, crs="EPSG:32633",
                transform=from_origin(500000, 5000000, 0.5, 0.5))
    with rasterio.open(folder / "img.tif", "w", count=3, dtype="uint8", **prof) as ds:
        ds.write(img)
    with rasterio.open(folder / "lab.tif", "w", count=1, dtype="uint8", nodata=255, **prof) as ds:
        ds.write(lab, 1)
    return folder / "img.tif", folder / "lab.tif"


def _last_line(capsys) -> tuple[str, dict | None]:
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    return out, contract.parse_result(lines[-1])


def test_progress_json_ends_stdout_with_the_result(tmp_path, capsys):
    img, lab = _write_pair(tmp_path)
    model = tmp_path / "m.glnet"
    tiny = ["--window", "128", "--patch", "64", "--global-size", "64", "--threads", "2"]
    assert main(["--progress", "json", "train", str(img), "--labels", str(lab), "-o", str(model),
                 "--stages", "1", "--steps", "2", *tiny]) == 0
    out, result = _last_line(capsys)
    assert out.splitlines()[0].startswith(f"wrote {model}: stages 1, validation mIoU ")
    assert result["output"] == str(model) and result["stages_done"] == [1]
    assert result["steps"] == 2 and result["best_stage"] == 1
    assert 0 <= result["best_miou"] <= 1

    # Without --progress json: the same text, no JSON.
    assert main(["train", str(img), "--labels", str(lab), "-o", str(tmp_path / "n.glnet"),
                 "--stages", "1", "--steps", "2", "--quiet", *tiny]) == 0
    out, result = _last_line(capsys)
    assert result is None and len(out.splitlines()) == 1

    mask = tmp_path / "mask.tif"
    assert main(["--progress", "json", "segment", str(img), "-m", str(model), "-o", str(mask)]) == 0
    out, result = _last_line(capsys)
    assert out.startswith(f"wrote {mask}: 128 x 128 px")
    (scene,) = result["results"]
    assert scene["output"] == str(mask) and scene["width"] == scene["height"] == 128
    assert scene["style"] == str(mask.with_suffix(".qml")) and result["polygons"] is None

    assert main(["--progress", "json", "evaluate", str(mask), str(lab)]) == 0
    out, result = _last_line(capsys)
    assert out.startswith(f"prediction  {mask}")
    assert result["prediction"] == str(mask) and 0 <= result["overall_accuracy"] <= 1
    # --json prints that object alone, once.
    assert main(["--progress", "json", "evaluate", str(mask), str(lab), "--json"]) == 0
    out2, result2 = _last_line(capsys)
    assert result2 == result and len(out2.splitlines()) == 1
