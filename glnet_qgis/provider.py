"""The GLNet Processing provider."""

import configparser
import os

from qgis.core import QgsProcessingModelAlgorithm, QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from . import discovery
from .evaluate import EvaluateAlgorithm
from .importofficial import ImportOfficialAlgorithm
from .modelinfo import ModelInfoAlgorithm
from .quantize import QuantizeAlgorithm
from .segment import SegmentAlgorithm
from .setupengine import SetupEngineAlgorithm
from .train import TrainAlgorithm
from .vectorize import VectorizeAlgorithm

PLUGIN_DIR = os.path.dirname(__file__)
ICON_PATH = os.path.join(PLUGIN_DIR, "icon.svg")
METADATA_PATH = os.path.join(PLUGIN_DIR, "metadata.txt")
# The example Processing models (a link to resources/models in a checkout).
MODELS_DIR = os.path.join(PLUGIN_DIR, "models")
ALGORITHMS = (SegmentAlgorithm, TrainAlgorithm, VectorizeAlgorithm, EvaluateAlgorithm,
              ImportOfficialAlgorithm, ModelInfoAlgorithm, QuantizeAlgorithm,
              SetupEngineAlgorithm)


class GlnetProvider(QgsProcessingProvider):
    """Provider ``glnet``: GLNet land-cover segmentation algorithms."""

    def id(self):
        return "glnet"

    def name(self):
        return "GLNet"

    def longName(self):
        return "GLNet land cover (global-local segmentation of large rasters)"

    def icon(self):
        return QIcon(ICON_PATH)

    def svgIconPath(self):
        return ICON_PATH

    def versionInfo(self):
        parser = configparser.ConfigParser(interpolation=None)
        parser.read(METADATA_PATH, encoding="utf-8")
        return parser.get("general", "version", fallback="")

    def load(self):
        _add_settings(self.name())
        self.refreshAlgorithms()
        return True

    def unload(self):
        _remove_settings()

    def loadAlgorithms(self):
        for cls in ALGORITHMS:
            self.addAlgorithm(cls())
        for model in example_models():
            self.addAlgorithm(model)

    # The engine writes files itself: GeoTIFF masks and OGR vector files.
    def supportsNonFileBasedOutput(self):
        return False

    def supportedOutputRasterLayerExtensions(self):
        return ["tif"]

    def supportedOutputVectorLayerExtensions(self):
        return ["gpkg", "shp", "geojson", "fgb"]

    def defaultVectorFileExtension(self, hasGeometry=True):
        return "gpkg"

    def defaultRasterFileExtension(self):
        return "tif"


def _add_settings(group):
    """The engine's Python in Settings > Options > Processing > Providers > GLNet."""
    try:
        from processing.core.ProcessingConfig import ProcessingConfig, Setting
    except ImportError:  # Processing's Python part is absent: the setting is read all the same
        return
    ProcessingConfig.addSetting(Setting(
        group, discovery.SETTING,
        "Python with the GLNet engine (empty: GLNET_PYTHON, else found automatically)", "",
        valuetype=Setting.FILE))
    ProcessingConfig.readSettings()
    discovery.forget()


def _remove_settings():
    try:
        from processing.core.ProcessingConfig import ProcessingConfig
    except ImportError:
        return
    ProcessingConfig.removeSetting(discovery.SETTING)


def example_models():
    """The plugin's example Processing models, in the Toolbox under this provider."""
    names = sorted(os.listdir(MODELS_DIR)) if os.path.isdir(MODELS_DIR) else []
    models = []
    for name in names:
        if name.endswith(".model3"):
            model = QgsProcessingModelAlgorithm()
            if model.fromFile(os.path.join(MODELS_DIR, name)):
                models.append(model)
    return models
