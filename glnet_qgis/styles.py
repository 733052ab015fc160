"""Class colours and names on the layers the algorithms load in QGIS.

When an algorithm runs from the GUI (dialog, batch, model with loading on),
QGIS loads its outputs once it finishes; a layer post-processor then gives
a land-cover mask a paletted renderer and a polygon layer a categorised
renderer on ``class_id``, both with the class colours and names. The classes
come from the mask's ``GLNET_CLASSES`` tag (read with GDAL, which QGIS has) or
from the model file. Under ``qgis_process`` nothing is loaded and nothing here
runs.

The tag, the legend entries, the opacity and the outline width are the
engine's (``glnet.contract``), as in the ``MASK.qml`` and GeoPackage styles it
writes: the layers look the same however QGIS loads them.
"""

import os

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsPalettedRasterRenderer,
    QgsProcessingLayerPostProcessorInterface,
    QgsRasterLayer,
    QgsRendererCategory,
    QgsSymbol,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QColor

from .engine_loader import import_engine

# Set on a layer styled here (the number of classes), for tests and other tools.
STYLED_PROPERTY = "glnet/styled_classes"
# QGIS holds post-processors by pointer only: keep the Python objects alive.
_KEEP = []
_KEEP_MAX = 256


def _contract():
    return import_engine().contract


def mask_classes(path):
    """The classes (``ClassInfo``) of a mask's GLNET_CLASSES tag, else of its colour table."""
    try:
        from osgeo import gdal
    except ImportError:
        return []
    contract = _contract()
    ds = gdal.OpenEx(path, gdal.OF_RASTER | gdal.OF_READONLY)
    if ds is None:
        return []
    try:
        text = ds.GetMetadataItem(contract.CLASSES_TAG)
        if text:
            try:
                return contract.parse_classes(text)
            except ValueError:
                pass
        band = ds.GetRasterBand(1)
        table = band.GetColorTable() if band is not None else None
        if table is None:
            return []
        return [contract.ClassInfo(i, f"class {i}", tuple(table.GetColorEntry(i)[:3]))
                for i in range(min(table.GetCount(), contract.NODATA))
                if table.GetColorEntry(i)[3] > 0]
    finally:
        ds = None


def model_classes(meta):
    """The same list from a model's metadata."""
    return list(meta.classes)


def paletted_renderer(layer, classes):
    entries = [QgsPalettedRasterRenderer.Class(value, QColor(*rgba), label)
               for value, label, rgba in _contract().legend(classes)]
    return QgsPalettedRasterRenderer(layer.dataProvider(), 1, entries)


def categorized_renderer(layer, classes, field="class_id"):
    """Polygons as outlines in the class colour, no fill (the mask shows through)."""
    contract = _contract()
    categories = []
    for value, label, rgba in contract.legend(classes):
        symbol = QgsSymbol.defaultSymbol(layer.geometryType())
        symbol.setColor(QColor(*rgba))
        if layer.geometryType() == QgsWkbTypes.PolygonGeometry:
            fill = symbol.symbolLayer(0)
            fill.setBrushStyle(Qt.NoBrush)
            fill.setStrokeColor(QColor(*rgba))
            fill.setStrokeWidth(contract.OUTLINE_WIDTH_MM)
        categories.append(QgsRendererCategory(value, symbol, label))
    return QgsCategorizedSymbolRenderer(field, categories)


class ClassStyler(QgsProcessingLayerPostProcessorInterface):
    """Applies the class renderer to the loaded layer (and gives it a name)."""

    def __init__(self, classes, name=None):
        super().__init__()
        self.classes = list(classes)
        self.name = name

    def postProcessLayer(self, layer, context, feedback):
        if not self.classes:
            return
        if isinstance(layer, QgsRasterLayer) and layer.bandCount() == 1:
            renderer = paletted_renderer(layer, self.classes)
            renderer.setOpacity(_contract().MASK_OPACITY)
            layer.setRenderer(renderer)
        elif isinstance(layer, QgsVectorLayer) and layer.fields().indexOf("class_id") >= 0:
            layer.setRenderer(categorized_renderer(layer, self.classes))
        else:
            return
        if self.name:
            layer.setName(self.name)
        layer.setCustomProperty(STYLED_PROPERTY, len(self.classes))
        layer.triggerRepaint()


def style_on_load(context, path, classes, name=None):
    """Style ``path``'s layer with ``classes`` if QGIS loads it when the algorithm finishes."""
    if not path or not classes:
        return False
    key = _load_key(context, path)
    if key is None:
        return False
    name = name or layer_name(path)
    styler = ClassStyler(classes, name)
    _KEEP.append(styler)
    del _KEEP[:-_KEEP_MAX]
    details = context.layerToLoadOnCompletionDetails(key)
    if name:
        details.name = name
    details.setPostProcessor(styler)
    return True


def layer_name(path):
    """A loaded output's layer name: its file name without the extension (None for a
    temporary output, whose name is the parameter's: QGIS's own name, the description)."""
    path = os.path.abspath(path.split("|")[0])
    try:
        from qgis.core import QgsProcessingUtils

        temp = os.path.abspath(QgsProcessingUtils.tempFolder())
    except Exception:  # noqa: BLE001 - no Processing temporary folder
        temp = None
    if temp and path.startswith(temp + os.sep):
        return None
    return os.path.splitext(os.path.basename(path))[0]


def _load_key(context, path):
    """The key under which QGIS will load ``path`` (it may be relative or carry options)."""
    if context.willLoadLayerOnCompletion(path):
        return path
    target = os.path.abspath(path)
    for key in context.layersToLoadOnCompletion():
        if os.path.abspath(key.split("|")[0]) == target:
            return key
    return None
