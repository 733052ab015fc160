"""The QGIS rough edges: results that lie on a non-georeferenced image, the bands list,
the loaded layers' names and styles, and a Processing log of one line per message.

Every run goes through the real ``qgis_process`` with the plugin, on the engine of
this checkout (GLNET_PYTHON passes this test's PYTHONPATH on); the models are tiny
and untrained, the images at most 160 px.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from qgis_support import Qgis, checkout_qgis

pytestmark = pytest.mark.qgis


@pytest.fixture(scope="module")
def qgis(tmp_path_factory) -> Qgis:
    return checkout_qgis(tmp_path_factory)


def tiny_model(path, bands: int = 3):
    from glnet.config import NetConfig
    from glnet.modelfile import default_meta, save_model
    from glnet.nn.glnet import GLNet

    cfg = NetConfig(backbone="resnet18", in_channels=bands, num_classes=3, fpn_channels=16,
                    smooth_channels=8, fuse_kernel=1, window_size=112, global_size=64,
                    patch_size=64, min_overlap=16)
    return save_model(GLNet(cfg), default_meta(cfg, stages=(1,)), path)


def write_png(path, bands: int = 3, height: int = 96, width: int = 160):
    """A PNG (no geotransform, no CRS) of random pixels."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    image = np.random.default_rng(0).integers(0, 255, (bands, height, width), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="PNG", width=width, height=height, count=bands,
                           dtype="uint8") as ds:
            ds.write(image)
    return path


EXTENTS = """
from qgis.core import QgsRasterLayer, QgsVectorLayer
out = {}
for path in ARGS:
    layer = (QgsVectorLayer(path, 'v', 'ogr') if path.endswith('.gpkg')
             else QgsRasterLayer(path, 'r'))
    e = layer.extent()
    out[path] = [layer.isValid(), [e.xMinimum(), e.yMinimum(), e.xMaximum(), e.yMaximum()],
                 layer.crs().isValid()]
print('EXTENTS' + json.dumps(out))
"""


def layer_extents(qgis: Qgis, *paths) -> dict:
    proc = qgis.pyqgis(EXTENTS, *map(str, paths))
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("EXTENTS")), None)
    assert line, proc.stdout + proc.stderr
    return json.loads(line[len("EXTENTS"):])


def test_results_of_a_png_lie_on_it_in_qgis(qgis, tmp_path):
    model = tiny_model(tmp_path / "m.glnet")
    png = write_png(tmp_path / "photo.png")
    mask, polygons = tmp_path / "photo_mask.tif", tmp_path / "photo_polygons.gpkg"
    proc = qgis.algorithm("glnet:segmentlandcover", f"INPUT={png}", f"MODEL={model}",
                          f"OUTPUT={mask}", f"POLYGONS={polygons}", "OVERVIEWS=false")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    warnings_ = json.loads(proc.stdout)["log"]["warning"]
    assert sum("is not georeferenced" in w for w in warnings_) == 1, warnings_
    assert "NotGeoreferencedWarning" not in log and "UserWarning" not in log, log

    vectorized = tmp_path / "vectorized.gpkg"
    qgis.results("glnet:vectorize", f"INPUT={mask}", f"OUTPUT={vectorized}")

    extents = layer_extents(qgis, png, mask, polygons, vectorized)
    # QGIS puts a raster without a geotransform at x 0..width, y -height..0.
    assert extents[str(png)] == [True, [0.0, -96.0, 160.0, 0.0], False], extents
    for path in (mask, polygons, vectorized):
        assert extents[str(path)][:2] == [True, [0.0, -96.0, 160.0, 0.0]], (path, extents)
    assert extents[str(mask)][2] is False  # no CRS, like the image


def test_a_one_band_image_feeds_a_three_band_model_with_bands_1_1_1(qgis, tmp_path):
    model = tiny_model(tmp_path / "rgb.glnet")
    png = write_png(tmp_path / "grey.png", bands=1, height=64, width=96)
    mask = tmp_path / "grey_mask.tif"
    params = [f"INPUT={png}", f"MODEL={model}", f"OUTPUT={mask}", "OVERVIEWS=false"]

    proc = qgis.algorithm("glnet:segmentlandcover", *params)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0 and not mask.exists(), log
    assert (f'{png} has 1 band(s) but the model takes 3 (band 1, band 2, band 3): '
            'set "Bands", e.g. 1,1,1') in log, log

    proc = qgis.algorithm("glnet:segmentlandcover", *params, "BANDS=1,1")
    assert proc.returncode != 0 and '"Bands": the model takes 3 band(s)' in proc.stdout + \
        proc.stderr

    results = qgis.results("glnet:segmentlandcover", *params, "BANDS=1,1,1")
    assert results["OUTPUT"] == str(mask) and mask.is_file()



LOADED = """
import processing
from qgis.core import QgsProject
png, model, mask, polygons = ARGS
processing.runAndLoadResults('glnet:segmentlandcover', {
    'INPUT': png, 'MODEL': model, 'OUTPUT': mask, 'POLYGONS': polygons, 'OVERVIEWS': False})
out = []
for layer in QgsProject.instance().mapLayers().values():
    renderer = layer.renderer()
    if hasattr(renderer, 'opacity'):
        out.append([layer.name(), 'raster', renderer.opacity()])
    else:
        categories = renderer.categories()  # kept: a category's symbol lives in it
        symbol = categories[0].symbol().symbolLayer(0)
        out.append([layer.name(), 'vector', int(symbol.brushStyle()),
                    symbol.strokeColor().name() == symbol.color().name()])
print('LOADED' + json.dumps(sorted(out)), flush=True)
os._exit(0)
"""


def test_loaded_results_are_named_after_their_files_and_styled(qgis, tmp_path):
    from glnet.vectorize.styles import read_layer_style

    model = tiny_model(tmp_path / "m.glnet")
    png = write_png(tmp_path / "field.png", height=64, width=96)
    mask, polygons = tmp_path / "field_classes.tif", tmp_path / "field_outlines.gpkg"
    proc = qgis.pyqgis(LOADED, str(png), str(model), str(mask), str(polygons))
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("LOADED")), None)
    assert line, (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:])
    assert json.loads(line[len("LOADED"):]) == [
        ["field_classes", "raster", 0.5], ["field_outlines", "vector", 0, True]], line

    # The styles the files carry for QGIS's own "Add layer".
    qml = mask.with_suffix(".qml").read_text()
    assert 'type="paletted"' in qml and 'opacity="0.5"' in qml
    style = read_layer_style(polygons, "field_outlines")
    assert '<Option name="style" value="no"' in style
    assert '<Option name="outline_width" value="0.4"' in style
