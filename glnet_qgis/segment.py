"""Processing algorithm ``glnet:segmentlandcover``: ``glnet segment`` in the worker."""

import os

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
)

from . import styles
from .algorithm import (
    MODEL_FILTER,
    VECTOR_EXTENSIONS,
    GlnetAlgorithm,
    advanced,
    engine_defaults,
    int_list,
    join,
)

DEVICES = ("cpu", "cuda")
# The engine's --precision values, in the order of the "Precision" choices.
PRECISIONS = ("auto", "fp32", "bf16", "int8")
# The engine's --backend values, in the order of the "Runtime" choices.
BACKENDS = ("torch", "openvino")
MODES = (None, 1, 2, 3)
REFINE = ("all", "confidence", "bbox", "bbox+confidence")
PROBABILITY_KINDS = ("classes", "confidence")


class SegmentAlgorithm(GlnetAlgorithm):
    """Segments a raster into a land-cover mask with a GLNet model."""

    INPUT = "INPUT"
    BANDS = "BANDS"
    MODEL = "MODEL"
    EXTENT = "EXTENT"
    AOI = "AOI"
    DEVICE = "DEVICE"
    PRECISION = "PRECISION"
    BACKEND = "BACKEND"
    WINDOW = "WINDOW"
    OVERLAP = "OVERLAP"
    BLEND = "BLEND"
    BATCH = "BATCH"
    MODE = "MODE"
    REFINE = "REFINE"
    REFINE_THRESHOLD = "REFINE_THRESHOLD"
    THREADS = "THREADS"
    RESAMPLE = "RESAMPLE"
    RESOLUTION = "RESOLUTION"
    FORCE_RESAMPLE = "FORCE_RESAMPLE"
    RESUME = "RESUME"
    OVERVIEWS = "OVERVIEWS"
    PROBABILITY_KIND = "PROBABILITY_KIND"
    OUTPUT = "OUTPUT"
    PROBABILITIES = "PROBABILITIES"
    POLYGONS = "POLYGONS"

    def name(self):
        return "segmentlandcover"

    def displayName(self):
        return self.tr("Segment land cover (GLNet)")

    def shortDescription(self):
        return self.tr("Segments a raster of any size into a land-cover mask with a GLNet model.")

    def shortHelpString(self):
        return self.tr(
            "Segments a georeferenced raster of any size into a land-cover mask with a GLNet "
            "model (.glnet, from 'Train GLNet model' or 'Import released GLNet checkpoints').\n\n"
            "The mask is a Cloud Optimized GeoTIFF on the input's grid (same CRS and pixels): "
            "one band of class values with nodata 255, the class colours and names. Loaded "
            "from the dialog it is styled with them. Optional outputs: class probabilities in "
            "percent, and the mask as polygons.\n\n"
            "Bands: the input's band numbers, comma-separated, in the order the model takes "
            "them, one per model band; a band may repeat (1,1,1 feeds a one-band image to a "
            "three-band RGB model). Empty: all bands, a trailing alpha band dropped. How many "
            "bands the model takes, and their names, is in the log's first line and in 'Model "
            "information'. Extent and area of interest limit the work and the "
            "output; pixels outside the area's polygons are nodata. Device: cpu, or cuda for an "
            "NVIDIA GPU. Precision: Automatic runs the network in bf16 where the processor "
            "computes it natively (CPUs with avx512_bf16 or AMX, GPUs from the Ampere "
            "generation on; faster, and a few pixels near class boundaries may "
            "change) and in fp32 elsewhere; fp32 always gives the full-precision mask; bf16 "
            "is used even where it is emulated (slower; the log warns); int8 runs the int8 "
            "branches that 'Make int8 model branches for OpenVINO' made for the model, with "
            "Runtime OpenVINO.\n\n"
            "Runtime (advanced): PyTorch, or OpenVINO for the CPU (the engine needs the "
            "openvino extra: pip install 'glnet-qgis[openvino]'); OpenVINO converts the model "
            "once, on its first run, into a folder MODEL.openvino beside the model file, and "
            "gives the same mask but for pixels where two classes are tied.\n\n"
            "Advanced (empty: the model's own value, read from its metadata): the context "
            "window, the least overlap of windows (the blending width, at most a quarter "
            "window), the blending width, the "
            "patches per forward pass, the branches used, and coarse-to-fine refinement: with "
            "'confidence' the local branch skips patches where the global branch is at least "
            "as confident as the threshold. Scenes whose resolution differs from the model's "
            "are resampled to it (or to the resolution given) unless told not to; a factor "
            "of more than 4x either way (a 30 m scene for a 0.5 m model is 60x, a job of "
            "hours) is refused before any work unless forced. The log shows the plan first: "
            "the size at the model's resolution, the number of windows and the resampling "
            "factor. Resume a stopped run: continue a run on the same output (same model, "
            "input and options) that was killed or cancelled with this turned on, from the "
            "strips of rows it finished (kept in a hidden folder beside the output).\n\n"
            "Runs in the GLNet engine's own Python environment (see the GLNET_PYTHON setting), "
            "never inside QGIS; cancelling stops it and leaves no output."
        )

    def initAlgorithm(self, config=None):
        defaults = engine_defaults("SegmentOptions")
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Input raster")))
        self.addParameter(QgsProcessingParameterString(
            self.BANDS, self.tr("Bands, in the model's order, e.g. 1,2,3 or 1,1,1 (empty: all)"),
            optional=True))
        self.addParameter(QgsProcessingParameterFile(
            self.MODEL, self.tr("GLNet model file"), QgsProcessingParameterFile.File,
            fileFilter=MODEL_FILTER))
        self.addParameter(QgsProcessingParameterExtent(
            self.EXTENT, self.tr("Extent (empty: the whole raster)"), optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.AOI, self.tr("Area of interest (pixels outside are nodata)"),
            [QgsProcessing.TypeVectorPolygon], optional=True))
        self.addParameter(QgsProcessingParameterEnum(
            self.DEVICE, self.tr("Device"), options=list(DEVICES),
            defaultValue=DEVICES.index(defaults.device)))
        self.addParameter(QgsProcessingParameterEnum(
            self.PRECISION, self.tr("Precision"),
            options=[self.tr("Automatic: bf16 where native, else fp32"), self.tr("fp32"),
                     self.tr("bf16"),
                     self.tr("int8 (Runtime OpenVINO, after 'Make int8 model branches')")],
            defaultValue=PRECISIONS.index(defaults.precision)))

        self.addParameter(advanced(QgsProcessingParameterNumber(
            self.WINDOW, self.tr("Context window in pixels (empty: the model's)"),
            QgsProcessingParameterNumber.Integer, optional=True, minValue=1)))
        self.addParameter(advanced(QgsProcessingParameterNumber(
            self.OVERLAP, self.tr("Least overlap of windows in pixels (empty: the blending width, at most a "
                             "quarter window)"),
            QgsProcessingParameterNumber.Integer, optional=True, minValue=0)))
        self.addParameter(advanced(QgsProcessingParameterNumber(
            self.BLEND, self.tr("Blending width between windows in pixels"),
            QgsProcessingParameterNumber.Integer, defaultValue=defaults.blend, minValue=1)))
        self.addParameter(advanced(QgsProcessingParameterNumber(
            self.BATCH, self.tr("Patches per forward pass (batch)"),
            QgsProcessingParameterNumber.Integer, defaultValue=defaults.sub_batch, minValue=1)))
        self.addParameter(advanced(QgsProcessingParameterEnum(
            self.MODE, self.tr("Branches"),
            options=[self.tr("the fullest the model supports"), self.tr("1: global only"),
                     self.tr("2: global to local"), self.tr("3: also local to global")],
            defaultValue=MODES.index(defaults.mode))))
        self.addParameter(advanced(QgsProcessingParameterEnum(
            self.REFINE, self.tr("Coarse to fine: patches refined by the local branch"),
            options=[self.tr("all"), self.tr("confidence: where the global branch is unsure"),
                     self.tr("bbox: around non-background classes"),
                     self.tr("bbox and confidence")],
            defaultValue=REFINE.index(defaults.refine))))
        self.addParameter(advanced(QgsProcessingParameterNumber(
            self.REFINE_THRESHOLD, self.tr("Coarse-to-fine confidence threshold"),
            QgsProcessingParameterNumber.Double, defaultValue=defaults.confidence, minValue=0.0,
            maxValue=1.0)))
        self.addParameter(advanced(QgsProcessingParameterNumber(
            self.THREADS, self.tr("CPU threads (empty: all)"), QgsProcessingParameterNumber.Integer,
            optional=True, minValue=1)))
        self.addParameter(advanced(QgsProcessingParameterEnum(
            self.BACKEND, self.tr("Runtime"),
            options=[self.tr("PyTorch"), self.tr("OpenVINO (CPU)")],
            defaultValue=BACKENDS.index(getattr(defaults, "backend", "torch")))))
        self.addParameter(advanced(QgsProcessingParameterBoolean(
            self.RESAMPLE, self.tr("Resample to the model's resolution when it differs"),
            defaultValue=defaults.resample)))
        self.addParameter(advanced(QgsProcessingParameterNumber(
            self.RESOLUTION, self.tr("Resample to this resolution in metres (empty: the model's)"),
            QgsProcessingParameterNumber.Double, optional=True, minValue=0.0)))
        self.addParameter(advanced(QgsProcessingParameterBoolean(
            self.FORCE_RESAMPLE, self.tr("Resample even by more than 4x (slow)"),
            defaultValue=defaults.force_resample)))
        self.addParameter(advanced(QgsProcessingParameterBoolean(
            self.OVERVIEWS, self.tr("Build overviews"), defaultValue=defaults.overviews)))
        self.addParameter(advanced(QgsProcessingParameterBoolean(
            self.RESUME, self.tr("Resume a stopped run"), defaultValue=defaults.resume)))
        self.addParameter(advanced(QgsProcessingParameterEnum(
            self.PROBABILITY_KIND, self.tr("Probabilities"),
            options=[self.tr("one band per class"), self.tr("the winning class's only")],
            defaultValue=PROBABILITY_KINDS.index(defaults.probability_kind))))

        self.addParameter(QgsProcessingParameterRasterDestination(
            self.OUTPUT, self.tr("Land-cover mask")))
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.PROBABILITIES, self.tr("Class probabilities (percent)"), optional=True,
            createByDefault=False))
        self.addParameter(QgsProcessingParameterVectorDestination(
            self.POLYGONS, self.tr("Land-cover polygons"), QgsProcessing.TypeVectorPolygon,
            optional=True, createByDefault=False))

    def band_list(self, parameters, context, layer, meta):
        """The "Bands" parameter as band numbers, checked against the layer and the model."""
        raw = parameters.get(self.BANDS)
        if isinstance(raw, (list, tuple)):  # qgis_process BANDS=3 BANDS=2, or an older model
            text = ",".join(str(v) for v in raw)
        else:
            text = self.parameterAsString(parameters, self.BANDS, context)
        bands = int_list(text, self.tr('"Bands"'))
        count = layer.bandCount()
        bad = [b for b in bands if not 1 <= b <= count]
        if bad:
            raise QgsProcessingException(self.tr(
                f'"Bands": the input raster has {count} band(s), so band {bad[0]} does not '
                f"exist (bands are numbered from 1)"))
        if meta is not None:
            n = meta.net.in_channels
            example = ",".join(["1"] * n) if count == 1 else ",".join(
                str(i) for i in range(1, n + 1))
            if bands and len(bands) != n:
                raise QgsProcessingException(self.tr(
                    f'"Bands": the model takes {n} band(s) ({", ".join(meta.bands)}), '
                    f"{len(bands)} given ({join(bands)}): give one input band per model "
                    f"band, e.g. {example}"))
            if not bands and count not in (n, n + 1):
                raise QgsProcessingException(self.tr(
                    f"{layer.source()} has {count} band(s) but the model takes {n} "
                    f'({", ".join(meta.bands)}): set "Bands", e.g. {example}'))
        return bands

    def processAlgorithm(self, parameters, context, feedback):
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        scene = self.raster_file(layer, "input raster")
        model = os.path.abspath(self.parameterAsFile(parameters, self.MODEL, context))
        output = self.raster_output(parameters, self.OUTPUT, context)
        probabilities = self.raster_output(parameters, self.PROBABILITIES, context)
        polygons = self.vector_output(parameters, self.POLYGONS, context)
        if output is None:
            raise QgsProcessingException("no output mask given")

        meta = self.model_metadata(model, feedback)
        if meta is not None:
            net = meta.net
            feedback.pushInfo(
                f"Model: {len(meta.classes)} classes ({', '.join(meta.class_names)}); bands "
                f"{', '.join(meta.bands)}; window {net.window_size} px, patch {net.patch_size} px, "
                f"global {net.global_size} px; stages {', '.join(map(str, meta.stages)) or 'none'}")

        args = [scene, "-m", model, "-o", output]
        if probabilities:
            args += ["--probabilities", probabilities, "--probability-kind",
                     PROBABILITY_KINDS[self.parameterAsEnum(parameters, self.PROBABILITY_KIND,
                                                            context)]]
        if polygons:
            args += ["--polygons", polygons]
        bands = self.band_list(parameters, context, layer, meta)
        if bands:
            args.append(f"--bands={join(bands)}")
        if parameters.get(self.EXTENT) not in (None, ""):
            extent = self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs())
            if not extent.isNull() and not extent.isEmpty():
                # "=" keeps argparse from reading a negative xmin as an option.
                args.append("--extent=" + join(repr(v) for v in (
                    extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum())))
        if parameters.get(self.AOI) not in (None, ""):
            aoi, aoi_layer = self.parameterAsCompatibleSourceLayerPathAndLayerName(
                parameters, self.AOI, context, list(VECTOR_EXTENSIONS), "gpkg", feedback)
            if aoi:
                args += ["--aoi", aoi]
                if aoi_layer:
                    args += ["--aoi-layer", aoi_layer]
        args += ["--device", DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)],
                 "--precision",
                 PRECISIONS[self.parameterAsEnum(parameters, self.PRECISION, context)]]
        backend = BACKENDS[self.parameterAsEnum(parameters, self.BACKEND, context)]
        if backend != "torch":  # an engine from before the option still runs torch
            args += ["--backend", backend]
        for key, flag in ((self.WINDOW, "--window"), (self.OVERLAP, "--overlap"),
                          (self.THREADS, "--threads")):
            if parameters.get(key) not in (None, ""):
                args += [flag, str(self.parameterAsInt(parameters, key, context))]
        args += ["--blend", str(self.parameterAsInt(parameters, self.BLEND, context)),
                 "--batch", str(self.parameterAsInt(parameters, self.BATCH, context))]
        mode = MODES[self.parameterAsEnum(parameters, self.MODE, context)]
        if mode is not None:
            args += ["--mode", str(mode)]
        args += ["--refine", REFINE[self.parameterAsEnum(parameters, self.REFINE, context)],
                 "--refine-threshold",
                 repr(self.parameterAsDouble(parameters, self.REFINE_THRESHOLD, context))]
        resolution = (self.parameterAsDouble(parameters, self.RESOLUTION, context)
                      if parameters.get(self.RESOLUTION) not in (None, "") else None)
        if not self.parameterAsBoolean(parameters, self.RESAMPLE, context):
            if resolution is not None:
                raise QgsProcessingException(self.tr(
                    "a resolution to resample to is given, but resampling is turned off"))
            args.append("--no-resample")
        elif resolution is not None:
            args.append(f"--resolution={resolution!r}")
        if self.parameterAsBoolean(parameters, self.FORCE_RESAMPLE, context):
            args.append("--force-resample")
        if not self.parameterAsBoolean(parameters, self.OVERVIEWS, context):
            args.append("--no-overviews")
        if self.parameterAsBoolean(parameters, self.RESUME, context):
            args.append("--resume")
        args += self.overwrite_flag(output, probabilities, polygons)

        self.run_engine("segment", args, feedback, outputs=[output, probabilities, polygons])

        classes = styles.mask_classes(output) or (styles.model_classes(meta) if meta else [])
        styles.style_on_load(context, output, classes)
        styles.style_on_load(context, polygons, classes)
        results = {self.OUTPUT: output}
        if probabilities:
            results[self.PROBABILITIES] = probabilities
        if polygons:
            results[self.POLYGONS] = polygons
        return results
