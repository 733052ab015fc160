"""The Dubai aerial imagery dataset folder (tile_N/images + tile_N/masks), read from the real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rasterio.windows import Window

from glnet.errors import GlnetError
from glnet.raster.labels import IGNORE
from glnet.train.datasets import DUBAI_CLASSES, dubai_scenes, scenes_from_folder

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
DUBAI = REAL / "dubai-aerial"

pytestmark = [
    pytest.mark.skipif(not (DUBAI / "tile_1" / "masks").is_dir(), reason=f"{DUBAI} not here"),
    pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning"),
]

NAMES = ["building", "land", "road", "vegetation", "water", "unlabeled"]


def _png_counts(mask: Path) -> tuple[np.ndarray, int, str]:
    """Per-class pixel counts of a mask decoded by Pillow (palette -> RGB), black pixels, mode."""
    im = Image.open(mask)
    rgb = np.asarray(im.convert("RGB"))
    counts = np.array([np.all(rgb == color, axis=-1).sum() for _, color in DUBAI_CLASSES])
    return counts, int(np.all(rgb == 0, axis=-1).sum()), im.mode


def _scene(scenes, name):
    return next(s for s in scenes if s.name == name)


def test_whole_folder_has_63_scenes_named_by_tile():
    scenes, classes = scenes_from_folder(DUBAI)
    assert len(scenes) == 63
    assert [c.name for c in classes] == NAMES and [c.value for c in classes] == list(range(6))
    assert scenes[0].name == "tile_1/image_part_001" and scenes[-1].name == "tile_7/image_part_009"
    assert {s.name.split("/")[0] for s in scenes} == {f"tile_{t}" for t in range(1, 8)}
    assert all(s.path.suffix == ".jpg" and len(s.bands) == 3 for s in scenes)


@pytest.mark.parametrize("name, mode", [("tile_3/image_part_006", "RGB"), ("tile_4/image_part_001", "P")])
def test_class_counts_equal_the_png_colours(name, mode):
    scenes, _ = dubai_scenes(DUBAI, tiles=[int(name[5])])
    scene = _scene(scenes, name)
    expected, black, found_mode = _png_counts(DUBAI / name.split("/")[0] / "masks" / f"{name.split('/')[1]}.png")
    assert found_mode == mode
    _, labels, valid = scene.read(Window(0, 0, scene.width, scene.height), num_classes=6)
    assert valid.all()
    counts = np.bincount(labels.ravel(), minlength=256)
    assert np.array_equal(counts[:6], expected)
    assert (expected > 0).sum() >= 3
    # Black (and nothing else here) is unlabelled.
    assert counts[IGNORE] == black == labels.size - expected.sum()
    if mode == "RGB":
        assert black == 302  # tile_3/image_part_006 has black pixels
    # Windowed reads agree with the whole-scene read.
    _, part, _ = scene.read(Window(100, 50, 200, 150))
    assert np.array_equal(part, labels[50:200, 100:300])


def test_subsets_of_tiles():
    scenes, _ = dubai_scenes(DUBAI, tiles=(4, 2))
    assert len(scenes) == 18
    assert [s.name for s in scenes][::9] == ["tile_2/image_part_001", "tile_4/image_part_001"]
    scenes, _ = scenes_from_folder(DUBAI, tiles=[7])
    assert len(scenes) == 9 and all(s.name.startswith("tile_7/") for s in scenes)
    # One tile's folder is a dataset too, and keeps the tile in the names.
    scenes, classes = scenes_from_folder(DUBAI / "tile_3")
    assert len(scenes) == 9 and scenes[3].name == "tile_3/image_part_004"
    assert [c.name for c in classes] == NAMES
    with pytest.raises(GlnetError, match=r"no tile 8, 9 \(it has tiles 1, 2, 3, 4, 5, 6, 7\)"):
        dubai_scenes(DUBAI, tiles=(1, 8, 9))


def test_tiles_on_another_folder_is_an_error(tmp_path):
    (tmp_path / "a_sat.jpg").write_bytes(b"")
    with pytest.raises(GlnetError, match="tiles can be chosen in a Dubai folder"):
        scenes_from_folder(tmp_path, tiles=[1])


def test_train_on_one_tile_and_evaluate_on_another(tmp_path):
    glnet = [sys.executable, "-m", "glnet.cli"]
    model = tmp_path / "dubai.glnet"
    train = subprocess.run(
        [*glnet, "train", "--dataset", str(DUBAI), "--tiles", "2", "-o", str(model), "--stages", "1",
         "--epochs", "1", "--windows-per-epoch", "1", "--window", "256", "--patch", "128",
         "--global-size", "128", "--val-fraction", "0", "--threads", "2", "--quiet"],
        capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr
    assert f"wrote {model}: stages 1" in train.stdout
    # Two parts of tile 3 (the two with black pixels), linked into one tile's folder to keep
    # segmenting short.
    tile = tmp_path / "tile_3"
    parts = ["image_part_006", "image_part_007"]
    for sub, ext in (("images", "jpg"), ("masks", "png")):
        (tile / sub).mkdir(parents=True)
        for part in parts:
            (tile / sub / f"{part}.{ext}").symlink_to(DUBAI / "tile_3" / sub / f"{part}.{ext}")
    ev = subprocess.run(
        [*glnet, "evaluate", "-m", str(model), "--dataset", str(tile), "--threads", "2", "--json"],
        capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    assert result["reference_kind"] == "2 labelled scene(s) of a dataset folder"
    assert [c["name"] for c in result["classes"]] == NAMES
    expected = sum(_png_counts(tile / "masks" / f"{part}.png")[0] for part in parts)
    assert [c["ref_pixels"] for c in result["classes"]] == expected.tolist()
    # Every labelled pixel is counted; the 302 + 4 black ones are not.
    assert result["pixels"] == expected.sum() == 2 * 658 * 682 - 306
    assert result["skipped_pixels"] == 306
    assert sum(c["pred_pixels"] for c in result["classes"]) == result["pixels"]
    assert 0.0 <= result["miou"] <= 1.0 and 0.0 <= result["overall_accuracy"] <= 1.0
