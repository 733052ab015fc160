"""The GLNet Processing provider."""

import configparser
import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .modelinfo import ModelInfoAlgorithm

PLUGIN_DIR = os.path.dirname(__file__)
ICON_PATH = os.path.join(PLUGIN_DIR, "icon.svg")
METADATA_PATH = os.path.join(PLUGIN_DIR, "metadata.txt")


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

    def loadAlgorithms(self):
        self.addAlgorithm(ModelInfoAlgorithm())
