"""Processing algorithm ``glnet:setupengine``: a Python environment with the engine and torch."""

import os

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputString,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterString,
)

from . import discovery, engine_setup
from .algorithm import GlnetAlgorithm, advanced


class SetupEngineAlgorithm(GlnetAlgorithm):
    """Creates or updates the engine's virtual environment and saves the GLNet Python setting."""

    GROUP = "engine"
    TARGET = "TARGET"
    BASE_PYTHON = "BASE_PYTHON"
    BUILD = "BUILD"
    INDEX = "INDEX"
    PYTHON = "PYTHON"

    def name(self):
        return discovery.SETUP_ALGORITHM.split(":", 1)[1]

    def displayName(self):
        return self.tr(discovery.SETUP_NAME)

    def shortDescription(self):
        return self.tr("Installs the GLNet engine with torch in a Python environment of its own "
                       "and points the other GLNet algorithms at it.")

    def shortHelpString(self):
        return self.tr(
            "The other GLNet algorithms run the network in a separate Python environment with "
            "torch (never inside QGIS). This algorithm makes one: it creates a virtual "
            "environment in the target folder (or reuses the one there), installs into it the "
            "engine that comes with the plugin, torch and torchvision and the pretrained "
            "trunks with pip (hundreds of megabytes are downloaded the first time; pip's "
            "output is in the log), checks that the engine runs, and only then saves its "
            "Python as the setting Settings > Options > Processing > Providers > GLNet.\n\n"
            "Running it again updates the environment and is quick when nothing changed. "
            "Cancelling stops pip and leaves the setting as it was.\n\n"
            "Base Python: the Python 3.10 or later that makes the environment (empty: "
            "QGIS's own where it is a python3 with venv, else the first python3 on PATH; "
            "on Debian and Ubuntu it needs the package python3-venv).\n\n"
            "Build: CPU (any machine) or CUDA (an NVIDIA GPU with its driver). Package index: "
            "an extra pip index for torch (empty: PyTorch's CPU index for the CPU build; "
            "PyPI for CUDA, whose torch for Linux is the CUDA build); pip's own "
            "configuration (pip.conf, PIP_INDEX_URL) applies as well."
        )

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterFile(
            self.TARGET, self.tr("Folder of the engine's virtual environment"),
            QgsProcessingParameterFile.Folder,
            defaultValue=os.path.expanduser(discovery.USER_VENV)))
        self.addParameter(QgsProcessingParameterFile(
            self.BASE_PYTHON, self.tr("Base Python to make it with (empty: found automatically)"),
            QgsProcessingParameterFile.File, optional=True))
        gpu = engine_setup.nvidia_gpu()
        self.addParameter(QgsProcessingParameterEnum(
            self.BUILD, self.tr("Build of torch"),
            [self.tr("CPU"), self.tr("CUDA (NVIDIA GPU)") if gpu
             else self.tr("CUDA (needs an NVIDIA GPU; none found)")],
            defaultValue=0))
        self.addParameter(advanced(QgsProcessingParameterString(
            self.INDEX, self.tr("Extra package index for torch (empty: the build's own)"),
            optional=True)))
        self.addOutput(QgsProcessingOutputString(
            self.PYTHON, self.tr("Python with the GLNet engine")))

    def processAlgorithm(self, parameters, context, feedback):
        target = self.parameterAsFile(parameters, self.TARGET, context)
        base = self.parameterAsFile(parameters, self.BASE_PYTHON, context)
        build = engine_setup.BUILDS[self.parameterAsEnum(parameters, self.BUILD, context)]
        index = self.parameterAsString(parameters, self.INDEX, context).strip()
        try:
            python = engine_setup.setup_engine(target, base, build, index, feedback)
        except engine_setup.SetupError as exc:
            raise QgsProcessingException(str(exc)) from None
        except engine_setup.SetupCancelled as exc:
            raise QgsProcessingException(str(exc)) from None
        return {self.PYTHON: python}
