"""What the GLNet algorithms share: inputs as files for the engine, outputs, the worker.

Each algorithm module translates its parameters into the arguments of one
``glnet`` command and calls ``GlnetAlgorithm.run_engine``, which runs it in the
worker process (``worker.py``) and turns the engine's errors, a missing engine
and cancellation into ``QgsProcessingException``.
"""

import os

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingParameterDefinition,
    QgsProcessingUtils,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from . import discovery, worker

PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))
ICON_PATH = os.path.join(PLUGIN_DIR, "icon.svg")
MODEL_FILTER = "GLNet models (*.glnet);;All files (*)"
RASTER_EXTENSIONS = (".tif", ".tiff")
# Vector formats the engine reads and writes (fiona drivers) and their extensions.
VECTOR_EXTENSIONS = ("gpkg", "shp", "geojson", "json", "fgb")


def advanced(param):
    """``param`` flagged as an advanced parameter."""
    param.setFlags(param.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
    return param


def int_list(text, what):
    """``"1, 2,3"`` as ``[1, 2, 3]``; a clear error otherwise."""
    text = (text or "").strip()
    if not text:
        return []
    try:
        return [int(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise QgsProcessingException(
            f"{what}: expected comma-separated whole numbers, got {text!r}") from None


def float_list(text, what):
    text = (text or "").strip()
    if not text:
        return []
    try:
        return [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise QgsProcessingException(
            f"{what}: expected comma-separated numbers, got {text!r}") from None


def join(values):
    return ",".join(str(v) for v in values)


def engine_defaults(name):
    """The engine's options class ``name`` (``glnet.config.SegmentOptions``, ...).

    Its class attributes are the defaults the engine uses; they are read here
    without torch (``engine_loader``), so that the dialogs offer the same ones.
    """
    from .engine_loader import import_engine

    return getattr(import_engine().config, name)


class GlnetAlgorithm(QgsProcessingAlgorithm):
    """Base of the algorithms that run the engine's CLI in the worker."""

    GROUP = "landcover"

    def tr(self, text):
        return QCoreApplication.translate(type(self).__name__, text)

    def createInstance(self):
        return type(self)()

    def icon(self):
        return QIcon(ICON_PATH)

    def group(self):
        return {"landcover": self.tr("Land cover"), "models": self.tr("Models"),
                "engine": self.tr("Engine")}[self.GROUP]

    def groupId(self):
        return self.GROUP

    # ------------------------------------------------------------------ inputs

    def raster_file(self, layer, what):
        """The file (or GDAL dataset name) of a raster layer, for the engine to open."""
        if layer is None:
            raise QgsProcessingException(f"{what}: no raster layer")
        if not isinstance(layer, QgsRasterLayer) or layer.providerType() != "gdal":
            provider = layer.providerType() if hasattr(layer, "providerType") else "?"
            raise QgsProcessingException(
                f"{what}: layer '{layer.name()}' ({provider}) is not a file GDAL can read; "
                "save it as a GeoTIFF first (Export > Save As...)")
        source = layer.source()
        return os.path.abspath(source) if os.path.exists(source) else source

    def vector_file(self, layer, context, feedback, what):
        """A single-layer vector file with ``layer``'s features (exported if needed)."""
        if not isinstance(layer, QgsVectorLayer):
            raise QgsProcessingException(f"{what}: not a vector layer")
        path = QgsProcessingUtils.convertToCompatibleFormat(
            layer, False, what.replace(" ", "_"), list(VECTOR_EXTENSIONS), "gpkg", context,
            feedback)
        return os.path.abspath(path) if os.path.exists(path) else path

    def label_file(self, layer, context, feedback, what):
        """A label layer as a file: rasters as they are, polygons as a single-layer file."""
        if isinstance(layer, QgsVectorLayer):
            return self.vector_file(layer, context, feedback, what)
        return self.raster_file(layer, what)

    def feature_source_file(self, parameters, name, context, feedback):
        """An optional feature-source parameter as a single-layer vector file, or None."""
        if parameters.get(name) in (None, ""):
            return None
        path = self.parameterAsCompatibleSourceLayerPath(
            parameters, name, context, list(VECTOR_EXTENSIONS), "gpkg", feedback)
        if not path:
            return None
        return os.path.abspath(path) if os.path.exists(path) else path

    # ------------------------------------------------------------------ outputs

    def raster_output(self, parameters, name, context):
        path = self.parameterAsOutputLayer(parameters, name, context)
        if not path:
            return None
        path = os.path.abspath(path)
        if not path.lower().endswith(RASTER_EXTENSIONS):
            raise QgsProcessingException(
                f"{path}: the engine writes GeoTIFF (Cloud Optimized); "
                "give the output a .tif extension")
        return path

    def vector_output(self, parameters, name, context):
        path = self.parameterAsOutputLayer(parameters, name, context)
        if not path:
            return None
        if path.startswith(("ogr:", "postgres:", "spatialite:", "memory:")):
            raise QgsProcessingException(
                f"{path}: save the polygons to a file (GeoPackage, Shapefile, GeoJSON "
                "or FlatGeobuf)")
        path = os.path.abspath(path.split("|")[0])
        if os.path.splitext(path)[1].lower().lstrip(".") not in VECTOR_EXTENSIONS:
            raise QgsProcessingException(
                f"{path}: polygons are written as GeoPackage (.gpkg), Shapefile (.shp), "
                "GeoJSON (.geojson) or FlatGeobuf (.fgb)")
        return path

    def file_output(self, parameters, name, context):
        path = self.parameterAsFileOutput(parameters, name, context)
        return os.path.abspath(path) if path else None

    @staticmethod
    def overwrite_flag(*paths):
        """``["--overwrite"]`` when an output exists: the user chose that destination."""
        return ["--overwrite"] if any(p and os.path.exists(p) for p in paths) else []

    # ------------------------------------------------------------------ running

    def run_engine(self, command, args, feedback, outputs=(), echo_stdout=True):
        """Run ``glnet COMMAND ARGS`` in the worker; errors become QgsProcessingException."""
        try:
            python = discovery.find_python()
            feedback.pushInfo(f"GLNet engine Python: {python}")
            return worker.run_engine(command, args, feedback, outputs=outputs, python=python,
                                     echo_stdout=echo_stdout)
        except discovery.EngineNotFound as exc:
            raise QgsProcessingException(str(exc)) from None
        except worker.EngineError as exc:
            raise QgsProcessingException(str(exc)) from None
        except worker.EngineCancelled:
            raise QgsProcessingException(self.tr(
                "Cancelled: the GLNet engine was stopped and no output was written")) from None

    def model_metadata(self, path, feedback):
        """A model file's metadata, read in this process without torch (None if unavailable)."""
        try:
            from .engine_loader import import_engine

            glnet = import_engine()
            return glnet.modelfile.read_metadata(path)
        except ImportError:
            return None
        except Exception:  # the engine run says what is wrong with the file, once
            return None

