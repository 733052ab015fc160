"""Processing algorithm ``glnet:vectorize``: ``glnet vectorize`` in the worker."""

from qgis.core import (
    QgsProcessing,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
)

from . import styles
from .algorithm import GlnetAlgorithm, advanced, engine_defaults, int_list, join


class VectorizeAlgorithm(GlnetAlgorithm):
    """Turns a land-cover mask into polygons with class names, areas and perimeters."""

    INPUT = "INPUT"
    MIN_AREA = "MIN_AREA"
    MIN_PIXELS = "MIN_PIXELS"
    SIMPLIFY = "SIMPLIFY"
    SMOOTH = "SMOOTH"
    CLASSES = "CLASSES"
    OUTPUT = "OUTPUT"

    def name(self):
        return "vectorize"

    def displayName(self):
        return self.tr("Vectorize land-cover mask")

    def shortDescription(self):
        return self.tr("Turns a land-cover mask into polygons with class names, areas and perimeters.")

    def shortHelpString(self):
        return self.tr(
            "Turns a land-cover mask (a one-band raster of class values, such as the output of "
            "'Segment land cover') into polygons with the fields class_id, class_name, area_m2 "
            "and perimeter_m (on the ellipsoid for geographic CRSs). Masks of any size are read "
            "in strips; polygons cut by a strip border are merged.\n\n"
            "Minimum area: regions smaller than this many square metres first take the class "
            "of their largest neighbour (a sieve), so noise does not become thousands of "
            "tiny polygons (the advanced options take the size in pixels instead). Simplify: a "
            "tolerance in metres; neighbouring polygons keep shared edges, so there are no "
            "gaps or overlaps. Classes: keep only these class values (empty: all).\n\n"
            "Loaded from the dialog, the layer is styled by class with the mask's colours."
        )

    def initAlgorithm(self, config=None):
        defaults = engine_defaults("VectorizeOptions")
        self.addParameter(QgsProcessingParameterRasterLayer(
            self.INPUT, self.tr("Land-cover mask")))
        self.addParameter(QgsProcessingParameterNumber(
            self.MIN_AREA, self.tr("Minimum area in square metres (smaller regions are merged "
                                   "into a neighbour)"),
            QgsProcessingParameterNumber.Double, optional=True, minValue=0.0))
        self.addParameter(advanced(QgsProcessingParameterNumber(
            self.MIN_PIXELS, self.tr("Minimum region size in pixels (instead of an area)"),
            QgsProcessingParameterNumber.Integer, optional=True, minValue=0)))
        self.addParameter(QgsProcessingParameterNumber(
            self.SIMPLIFY, self.tr("Simplification tolerance in metres (0: pixel outlines)"),
            QgsProcessingParameterNumber.Double, defaultValue=defaults.simplify, minValue=0.0))
        self.addParameter(advanced(QgsProcessingParameterNumber(
            self.SMOOTH, self.tr("Smoothing iterations (0 to 5)"),
            QgsProcessingParameterNumber.Integer, defaultValue=defaults.smooth, minValue=0,
            maxValue=5)))
        self.addParameter(QgsProcessingParameterString(
            self.CLASSES, self.tr("Classes to keep, e.g. 1,2 (empty: all)"), optional=True))
        self.addParameter(QgsProcessingParameterVectorDestination(
            self.OUTPUT, self.tr("Land-cover polygons"), QgsProcessing.TypeVectorPolygon))

    def processAlgorithm(self, parameters, context, feedback):
        mask = self.raster_file(self.parameterAsRasterLayer(parameters, self.INPUT, context),
                                "land-cover mask")
        output = self.vector_output(parameters, self.OUTPUT, context)
        args = [mask, "-o", output]
        if parameters.get(self.MIN_AREA) not in (None, ""):
            args += ["--min-area", repr(self.parameterAsDouble(parameters, self.MIN_AREA, context))]
        if parameters.get(self.MIN_PIXELS) not in (None, ""):
            args += ["--min-pixels", str(self.parameterAsInt(parameters, self.MIN_PIXELS, context))]
        simplify = self.parameterAsDouble(parameters, self.SIMPLIFY, context)
        if simplify:
            args += ["--simplify", repr(simplify)]
        smooth = self.parameterAsInt(parameters, self.SMOOTH, context)
        if smooth:
            args += ["--smooth", str(smooth)]
        classes = int_list(self.parameterAsString(parameters, self.CLASSES, context), "classes")
        if classes:
            args.append(f"--classes={join(classes)}")
        args += self.overwrite_flag(output)

        self.run_engine("vectorize", args, feedback, outputs=[output])
        styles.style_on_load(context, output, styles.mask_classes(mask))
        return {self.OUTPUT: output}
