"""Processing algorithm ``glnet:importofficial``: ``glnet import-official`` in the worker."""

import os

from qgis.core import QgsProcessingParameterFile, QgsProcessingParameterFileDestination

from .algorithm import GlnetAlgorithm

CHECKPOINT_FILTER = "GLNet checkpoints (*.pth);;All files (*)"


class ImportOfficialAlgorithm(GlnetAlgorithm):
    """Converts the released GLNet DeepGlobe checkpoints into a model file."""

    GROUP = "models"
    G = "G"
    G2L = "G2L"
    L2G = "L2G"
    OUTPUT = "OUTPUT"

    def name(self):
        return "importofficial"

    def displayName(self):
        return self.tr("Import released GLNet checkpoints")

    def shortDescription(self):
        return self.tr("Converts the released GLNet DeepGlobe checkpoints into a GLNet model file.")

    def shortHelpString(self):
        return self.tr(
            "Converts the checkpoints released with GLNet (Chen et al., CVPR 2019) for the "
            "DeepGlobe land-cover dataset into a GLNet model file (.glnet) that 'Segment land "
            "cover' uses: G.pth (after stage 1), G2L.pth (after stage 2) and optionally "
            "L2G.pth (after stage 3). The model has DeepGlobe's seven classes (unknown, urban, "
            "agriculture, rangeland, forest, water, barren) with DeepGlobe's colours, takes RGB "
            "images, and uses the released network (ResNet-50, 2448 px windows, 508 px "
            "patches).\n\n"
            "The checkpoints are read as tensors only (no code in them is run); a file that is "
            "not a GLNet checkpoint is refused with a message naming it."
        )

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterFile(
            self.G, self.tr("Stage 1 checkpoint (G.pth)"), QgsProcessingParameterFile.File,
            fileFilter=CHECKPOINT_FILTER))
        self.addParameter(QgsProcessingParameterFile(
            self.G2L, self.tr("Stage 2 checkpoint (G2L.pth)"), QgsProcessingParameterFile.File,
            fileFilter=CHECKPOINT_FILTER))
        self.addParameter(QgsProcessingParameterFile(
            self.L2G, self.tr("Stage 3 checkpoint (L2G.pth)"), QgsProcessingParameterFile.File,
            fileFilter=CHECKPOINT_FILTER, optional=True))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT, self.tr("Model file"), self.tr("GLNet models (*.glnet)")))

    def processAlgorithm(self, parameters, context, feedback):
        checkpoints = [self.parameterAsFile(parameters, key, context)
                       for key in (self.G, self.G2L, self.L2G)]
        output = self.file_output(parameters, self.OUTPUT, context)
        args = [os.path.abspath(p) for p in checkpoints if p]
        args += ["-o", output, *self.overwrite_flag(output)]
        self.run_engine("import-official", args, feedback, outputs=[output])
        return {self.OUTPUT: output}
