"""Processing algorithm ``glnet:train``: ``glnet train`` in the worker."""

import os

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from .algorithm import GlnetAlgorithm, advanced, engine_defaults, float_list, int_list, join
from .segment import DEVICES

# The engine's presets (glnet.config.PRESETS), in the order of the "Network preset" choices.
PRESETS = ("fast", "lite", "official")
UNLABELLED = ("background", "ignore")


class TrainAlgorithm(GlnetAlgorithm):
    """Trains a GLNet model on image rasters with label rasters or polygons."""

    GROUP = "models"
    INPUT = "INPUT"
    LABELS = "LABELS"
    CLASS_FIELD = "CLASS_FIELD"
    CLASS_NAME = "CLASS_NAME"
    CLASSES = "CLASSES"
    UNLABELLED = "UNLABELLED"
    AOI = "AOI"
    BANDS = "BANDS"
    PRESET = "PRESET"
    WINDOW = "WINDOW"
    PATCH = "PATCH"
    GLOBAL_SIZE = "GLOBAL_SIZE"
    STAGES = "STAGES"
    EPOCHS = "EPOCHS"
    STEPS = "STEPS"
    LR = "LR"
    WINDOWS_PER_EPOCH = "WINDOWS_PER_EPOCH"
    MAX_MINUTES = "MAX_MINUTES"
    VAL_FRACTION = "VAL_FRACTION"
    BALANCE = "BALANCE"
    BACKBONE_WEIGHTS = "BACKBONE_WEIGHTS"
    SEED = "SEED"
    THREADS = "THREADS"
    DEVICE = "DEVICE"
    RESUME = "RESUME"
    OUTPUT = "OUTPUT"
    BEST_MIOU = "BEST_MIOU"

    def name(self):
        return "train"

    def displayName(self):
        return self.tr("Train GLNet model")

    def shortDescription(self):
        return self.tr("Trains a GLNet land-cover model on rasters with label rasters or polygons.")

    def shortHelpString(self):
        return self.tr(
            "Trains a GLNet land-cover model on georeferenced image rasters and their labels, "
            "in GLNet's three stages (1 global branch; 2 global to local; 3 local to global), "
            "and writes a model file (.glnet) for 'Segment land cover'.\n\n"
            "Labels: one layer per image, in the same order: a raster of class values "
            "(0, 1, 2...) on the image's grid, or polygons with a class field (names or whole "
            "numbers; 'Class field'), or polygons of one class ('One class for all polygons'). "
            "Pixels outside all polygons are a 'background' class or ignored. Class names and "
            "colours come from the labels, or from a JSON file such as "
            '[{"value": 0, "name": "water", "color": [31, 120, 180]}, ...].\n\n'
            "The right-hand part of each image (the validation fraction) is held out to score "
            "the model; the best model by validation mIoU is kept, and a checkpoint "
            "MODEL.ckpt beside the output lets 'Resume' continue an interrupted run.\n\n"
            "Advanced: the network preset, window, patch and global sizes (default: the "
            "preset's, the window may be smaller than the images), stages, epochs and learning "
            "rates per stage (e.g. 20,20,10), windows per epoch, a time budget, random seed, "
            "CPU threads, and the device (cpu, or cuda for an NVIDIA GPU).\n\n"
            "Runs in the GLNet engine's own Python environment (see the GLNET_PYTHON setting), "
            "never inside QGIS."
        )

    def initAlgorithm(self, config=None):
        defaults = engine_defaults("TrainOptions")
        self.addParameter(QgsProcessingParameterMultipleLayers(
            self.INPUT, self.tr("Image rasters"), QgsProcessing.TypeRaster))
        self.addParameter(QgsProcessingParameterMultipleLayers(
            self.LABELS, self.tr("Labels (one raster or polygon layer per image, same order)"),
            QgsProcessing.TypeMapLayer))
        self.addParameter(QgsProcessingParameterString(
            self.CLASS_FIELD, self.tr("Class field of polygon labels"), optional=True))
        self.addParameter(QgsProcessingParameterString(
            self.CLASS_NAME, self.tr("One class for all polygons (e.g. building)"),
            optional=True))
        self.addParameter(QgsProcessingParameterFile(
            self.CLASSES, self.tr("Classes: JSON list of {value, name, color} (empty: found "
                                  "in the labels)"),
            QgsProcessingParameterFile.File, optional=True,
            fileFilter="JSON files (*.json);;All files (*)"))
        self.addParameter(QgsProcessingParameterEnum(
            self.UNLABELLED, self.tr("Pixels outside all label polygons"),
            options=[self.tr("a 'background' class"), self.tr("ignored")], defaultValue=0))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.AOI, self.tr("Area of interest (pixels outside are ignored)"),
            [QgsProcessing.TypeVectorPolygon], optional=True))
        self.addParameter(advanced(QgsProcessingParameterString(
            self.BANDS, self.tr("Image bands to use, e.g. 1,2,3 (empty: all)"), optional=True)))
        self.addParameter(advanced(QgsProcessingParameterEnum(
            self.PRESET, self.tr("Network preset"), options=list(PRESETS),
            defaultValue=PRESETS.index(defaults.preset))))
        for key, label in ((self.WINDOW, "Window size in pixels (empty: the preset's)"),
                           (self.PATCH, "Patch size in pixels (empty: the preset's)"),
                           (self.GLOBAL_SIZE, "Global image size in pixels (empty: the preset's)"),
                           (self.WINDOWS_PER_EPOCH, "Training windows per epoch (empty: automatic)")):
            self.addParameter(advanced(QgsProcessingParameterNumber(
                key, self.tr(label), QgsProcessingParameterNumber.Integer, optional=True,
                minValue=1)))
        self.addParameter(advanced(QgsProcessingParameterString(
            self.STAGES, self.tr("Stages to run"), defaultValue=join(defaults.stages))))
        self.addParameter(advanced(QgsProcessingParameterString(
            self.EPOCHS, self.tr("Epochs per stage, e.g. 20,20,10 (empty: the defaults)"),
            optional=True)))
        self.addParameter(advanced(QgsProcessingParameterString(
            self.STEPS, self.tr("Optimiser steps per stage instead of epochs, e.g. 300,300,300 "
                                "(the same on any machine; empty: epochs)"),
            optional=True)))
        self.addParameter(advanced(QgsProcessingParameterString(
            self.LR, self.tr("Learning rate per stage, e.g. 1e-4,2e-5,5e-5 (empty: the defaults)"),
            optional=True)))
        self.addParameter(advanced(QgsProcessingParameterNumber(
            self.MAX_MINUTES, self.tr("Time budget in minutes (empty: none)"),
            QgsProcessingParameterNumber.Double, optional=True, minValue=0.01)))
        self.addParameter(advanced(QgsProcessingParameterNumber(
            self.VAL_FRACTION, self.tr("Validation fraction (right-hand share of each image)"),
            QgsProcessingParameterNumber.Double, defaultValue=defaults.val_fraction, minValue=0.0,
            maxValue=0.9)))
        self.addParameter(advanced(QgsProcessingParameterBoolean(
            self.BALANCE, self.tr("Favour windows with rare classes"),
            defaultValue=defaults.balance)))
        self.addParameter(advanced(QgsProcessingParameterFile(
            self.BACKBONE_WEIGHTS, self.tr("ImageNet weights of the ResNet backbone (.pth)"),
            QgsProcessingParameterFile.File, optional=True,
            fileFilter="PyTorch weights (*.pth *.pt);;All files (*)")))
        self.addParameter(advanced(QgsProcessingParameterNumber(
            self.SEED, self.tr("Random seed"), QgsProcessingParameterNumber.Integer,
            defaultValue=defaults.seed, minValue=0)))
        self.addParameter(advanced(QgsProcessingParameterNumber(
            self.THREADS, self.tr("CPU threads (empty: all)"), QgsProcessingParameterNumber.Integer,
            optional=True, minValue=1)))
        self.addParameter(advanced(QgsProcessingParameterEnum(
            self.DEVICE, self.tr("Device"), options=list(DEVICES),
            defaultValue=DEVICES.index(defaults.device))))
        self.addParameter(advanced(QgsProcessingParameterBoolean(
            self.RESUME, self.tr("Resume from the checkpoint beside the output"),
            defaultValue=False)))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT, self.tr("Model file"), self.tr("GLNet models (*.glnet)")))
        self.addOutput(QgsProcessingOutputNumber(
            self.BEST_MIOU, self.tr("Best validation mIoU")))

    def processAlgorithm(self, parameters, context, feedback):
        images = self.parameterAsLayerList(parameters, self.INPUT, context)
        labels = self.parameterAsLayerList(parameters, self.LABELS, context)
        if not images:
            raise QgsProcessingException("no image rasters given")
        if len(labels) != len(images):
            raise QgsProcessingException(
                f"{len(images)} images but {len(labels)} label layers: give one label layer "
                "per image, in the same order")
        output = self.file_output(parameters, self.OUTPUT, context)
        args = [self.raster_file(layer, "image") for layer in images]
        args += ["--labels", *[self.label_file(layer, context, feedback, "labels")
                              for layer in labels]]
        args += ["-o", output]

        field = self.parameterAsString(parameters, self.CLASS_FIELD, context).strip()
        name = self.parameterAsString(parameters, self.CLASS_NAME, context).strip()
        if field:
            args += ["--class-field", field]
        if name:
            args += ["--class-name", name]
        classes = self.parameterAsFile(parameters, self.CLASSES, context)
        if classes:
            args += ["--classes", os.path.abspath(classes)]
        args += ["--unlabelled", UNLABELLED[self.parameterAsEnum(parameters, self.UNLABELLED,
                                                                  context)]]
        aoi = self.feature_source_file(parameters, self.AOI, context, feedback)
        if aoi:
            args += ["--aoi", aoi]
        bands = int_list(self.parameterAsString(parameters, self.BANDS, context), "bands")
        if bands:
            args += ["--bands", join(bands)]
        args += ["--preset", PRESETS[self.parameterAsEnum(parameters, self.PRESET, context)]]
        args += ["--device", DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)]]
        for key, flag in ((self.WINDOW, "--window"), (self.PATCH, "--patch"),
                          (self.GLOBAL_SIZE, "--global-size"),
                          (self.WINDOWS_PER_EPOCH, "--windows-per-epoch"),
                          (self.THREADS, "--threads")):
            if parameters.get(key) not in (None, ""):
                args += [flag, str(self.parameterAsInt(parameters, key, context))]
        stages = int_list(self.parameterAsString(parameters, self.STAGES, context), "stages")
        if stages:
            args += ["--stages", join(stages)]
        epochs = int_list(self.parameterAsString(parameters, self.EPOCHS, context), "epochs")
        if epochs:
            args += ["--epochs", join(epochs)]
        steps = int_list(self.parameterAsString(parameters, self.STEPS, context), "steps")
        if steps:
            args += ["--steps", join(steps)]
        lrs = float_list(self.parameterAsString(parameters, self.LR, context), "learning rates")
        if lrs:
            args += ["--lr", join(f"{v:g}" for v in lrs)]
        if parameters.get(self.MAX_MINUTES) not in (None, ""):
            args += ["--max-minutes",
                     f"{self.parameterAsDouble(parameters, self.MAX_MINUTES, context):g}"]
        args += ["--val-fraction",
                 f"{self.parameterAsDouble(parameters, self.VAL_FRACTION, context):g}"]
        if self.parameterAsBoolean(parameters, self.BALANCE, context):
            args.append("--balance")
        weights = self.parameterAsFile(parameters, self.BACKBONE_WEIGHTS, context)
        if weights:
            args += ["--backbone-weights", os.path.abspath(weights)]
        args += ["--seed", str(self.parameterAsInt(parameters, self.SEED, context))]
        if self.parameterAsBoolean(parameters, self.RESUME, context):
            args.append("--resume")
        else:
            args += self.overwrite_flag(output)

        result = self.run_engine("train", args, feedback, outputs=[output])
        results = {self.OUTPUT: output}
        best = (result.result or {}).get("best_miou")  # None: no validation area
        if best is not None:
            results[self.BEST_MIOU] = float(best)
        return results
