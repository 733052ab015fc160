"""Processing algorithm ``glnet:quantize``: ``glnet quantize`` in the worker."""

import os

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputFolder,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
)

from .algorithm import MODEL_FILTER, GlnetAlgorithm, advanced, engine_defaults


class QuantizeAlgorithm(GlnetAlgorithm):
    """Makes int8 branches of a model for the OpenVINO runtime, calibrated on a raster."""

    GROUP = "models"
    MODEL = "MODEL"
    INPUT = "INPUT"
    WINDOWS = "WINDOWS"
    HELD_OUT = "HELD_OUT"
    MIN_AGREEMENT = "MIN_AGREEMENT"
    THREADS = "THREADS"
    FOLDER = "FOLDER"
    AGREEMENT = "AGREEMENT"

    def name(self):
        return "quantize"

    def displayName(self):
        return self.tr("Make int8 model branches for OpenVINO")

    def shortDescription(self):
        return self.tr("Quantises a GLNet model to int8 for 'Segment land cover' with the OpenVINO "
                       "runtime and int8 precision.")

    def shortHelpString(self):
        return self.tr(
            "Quantises the branch networks of a GLNet model to int8 for the OpenVINO runtime, "
            "calibrated on windows of a raster like the model's training scene, and keeps them "
            "in a folder MODEL.openvino beside the model file. The int8 classes are compared "
            "with full precision on further windows of the same raster; the int8 branches are "
            "kept only if they keep the class of at least the given share of those pixels "
            "(otherwise the log says by how much they missed and nothing is kept).\n\n"
            "Then run 'Segment land cover' with Runtime OpenVINO and Precision int8. Needs the "
            "engine's int8 extra: pip install 'glnet-qgis[int8]'."
        )

    def initAlgorithm(self, config=None):
        defaults = engine_defaults("QuantizeOptions")
        self.addParameter(QgsProcessingParameterFile(
            self.MODEL, self.tr("GLNet model file"), QgsProcessingParameterFile.File,
            fileFilter=MODEL_FILTER))
        self.addParameter(QgsProcessingParameterRasterLayer(
            self.INPUT, self.tr("Raster to calibrate on (like the training scene)")))
        self.addParameter(advanced(QgsProcessingParameterNumber(
            self.WINDOWS, self.tr("Calibration windows"), QgsProcessingParameterNumber.Integer,
            defaultValue=defaults.windows, minValue=1)))
        self.addParameter(advanced(QgsProcessingParameterNumber(
            self.HELD_OUT, self.tr("Held-out windows for the comparison"),
            QgsProcessingParameterNumber.Integer, defaultValue=defaults.held_out, minValue=1)))
        self.addParameter(advanced(QgsProcessingParameterNumber(
            self.MIN_AGREEMENT, self.tr("Least share of pixels whose class int8 keeps"),
            QgsProcessingParameterNumber.Double, defaultValue=defaults.min_agreement,
            minValue=0.0, maxValue=1.0)))
        self.addParameter(advanced(QgsProcessingParameterNumber(
            self.THREADS, self.tr("CPU threads (empty: all)"), QgsProcessingParameterNumber.Integer,
            optional=True, minValue=1)))
        self.addOutput(QgsProcessingOutputFolder(self.FOLDER, self.tr("Folder of the int8 branches")))
        self.addOutput(QgsProcessingOutputNumber(
            self.AGREEMENT, self.tr("Share of held-out pixels whose class int8 keeps")))

    def processAlgorithm(self, parameters, context, feedback):
        model = os.path.abspath(self.parameterAsFile(parameters, self.MODEL, context))
        scene = self.raster_file(self.parameterAsRasterLayer(parameters, self.INPUT, context),
                                 "calibration raster")
        args = [model, scene,
                "--windows", str(self.parameterAsInt(parameters, self.WINDOWS, context)),
                "--held-out", str(self.parameterAsInt(parameters, self.HELD_OUT, context)),
                "--min-agreement",
                repr(self.parameterAsDouble(parameters, self.MIN_AGREEMENT, context))]
        if parameters.get(self.THREADS) not in (None, ""):
            args += ["--threads", str(self.parameterAsInt(parameters, self.THREADS, context))]
        result = self.run_engine("quantize", args, feedback).result
        if not isinstance(result, dict):
            raise QgsProcessingException("the GLNet engine gave no result")
        return {self.FOLDER: result.get("folder"), self.AGREEMENT: result.get("agreement")}
