"""Processing algorithm ``glnet:modelinfo``: what a model file contains."""

import html
import os

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
)
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from .engine_loader import import_engine

# QGIS refuses a file parameter value that matches none of the filters, so
# "All files" lets any file through to the engine, which says what is wrong with it.
MODEL_FILTER = "GLNet models (*.glnet);;All files (*)"


class ModelInfoAlgorithm(QgsProcessingAlgorithm):
    """Reads a model file's metadata (never its weights) through the engine."""

    MODEL = "MODEL"
    OUTPUT_HTML = "OUTPUT_HTML"
    CLASSES = "CLASSES"
    NUM_CLASSES = "NUM_CLASSES"
    BANDS = "BANDS"
    PRESET = "PRESET"
    STAGES = "STAGES"
    WINDOW_SIZE = "WINDOW_SIZE"
    PATCH_SIZE = "PATCH_SIZE"
    GLOBAL_SIZE = "GLOBAL_SIZE"

    def tr(self, text):
        return QCoreApplication.translate("GlnetModelInfo", text)

    def createInstance(self):
        return type(self)()

    def name(self):
        return "modelinfo"

    def displayName(self):
        return self.tr("Model information")

    def group(self):
        return self.tr("Models")

    def groupId(self):
        return "models"

    def icon(self):
        from .algorithm import ICON_PATH

        return QIcon(ICON_PATH)

    def shortDescription(self):
        return self.tr("Shows a GLNet model file's classes, bands and window sizes.")

    def shortHelpString(self):
        return self.tr(
            "Shows what a GLNet model file (.glnet) contains without loading its weights: "
            "the output classes with their values and colours, the input bands, the preset "
            "the network was built from, the training stages done, and the window, patch "
            "and global sizes it segments with.\n\n"
            "Optionally writes the same as an HTML report with colour swatches. "
            "A file that is not a GLNet model is refused with a message naming it."
        )

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterFile(
            self.MODEL, self.tr("Model file"), QgsProcessingParameterFile.File,
            fileFilter=MODEL_FILTER))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT_HTML, self.tr("Model report"), self.tr("HTML files (*.html)"),
            optional=True, createByDefault=False))
        self.addOutput(QgsProcessingOutputString(
            self.CLASSES, self.tr("Class names, comma-separated")))
        self.addOutput(QgsProcessingOutputNumber(self.NUM_CLASSES, self.tr("Number of classes")))
        self.addOutput(QgsProcessingOutputString(
            self.BANDS, self.tr("Input band names, comma-separated")))
        self.addOutput(QgsProcessingOutputString(self.PRESET, self.tr("Preset")))
        self.addOutput(QgsProcessingOutputString(
            self.STAGES, self.tr("Training stages done, comma-separated")))
        self.addOutput(QgsProcessingOutputNumber(
            self.WINDOW_SIZE, self.tr("Window size (pixels)")))
        self.addOutput(QgsProcessingOutputNumber(self.PATCH_SIZE, self.tr("Patch size (pixels)")))
        self.addOutput(QgsProcessingOutputNumber(
            self.GLOBAL_SIZE, self.tr("Global image size (pixels)")))

    def processAlgorithm(self, parameters, context, feedback):
        path = self.parameterAsFile(parameters, self.MODEL, context)
        html_path = self.parameterAsFileOutput(parameters, self.OUTPUT_HTML, context)
        glnet = import_engine()
        feedback.pushInfo(f"glnet engine: {os.path.dirname(glnet.__file__)}")
        try:
            # The whole file, checksum included (what `glnet info` checks), without torch.
            meta, _ = glnet.modelfile.check_model_file(path)
        except glnet.errors.GlnetError as err:
            raise QgsProcessingException(str(err)) from None
        except Exception as err:  # anything else: still one line naming the file
            raise QgsProcessingException(
                f"{path}: cannot read this model file ({type(err).__name__}: {err})") from None

        results = {
            self.CLASSES: ", ".join(meta.class_names),
            self.NUM_CLASSES: len(meta.classes),
            self.BANDS: ", ".join(meta.bands),
            self.PRESET: meta.preset,
            self.STAGES: ", ".join(str(s) for s in meta.stages),
            self.WINDOW_SIZE: meta.net.window_size,
            self.PATCH_SIZE: meta.net.patch_size,
            self.GLOBAL_SIZE: meta.net.global_size,
        }
        for key, value in results.items():
            feedback.pushInfo(f"{key}: {value}")
        if html_path:
            with open(html_path, "w", encoding="utf-8") as f:
                f.write(report_html(path, meta))
            results[self.OUTPUT_HTML] = html_path
        return results


def report_html(path, meta):
    """A small HTML page with a model's metadata and its classes' colours."""
    esc = html.escape
    net = meta.net
    rows = [
        ("Model file", path),
        ("Preset", meta.preset),
        ("Backbone", net.backbone),
        ("Input bands", ", ".join(meta.bands)),
        ("Data type", meta.dtype),
        ("Mean", ", ".join(f"{v:g}" for v in meta.mean)),
        ("Standard deviation", ", ".join(f"{v:g}" for v in meta.std)),
        ("Resolution (m/pixel)", "unknown" if meta.resolution is None else f"{meta.resolution:g}"),
        ("Training stages", ", ".join(str(s) for s in meta.stages) or "none"),
        ("Window size", f"{net.window_size} px"),
        ("Global image size", f"{net.global_size} px"),
        ("Patch size", f"{net.patch_size} px"),
        ("Least patch overlap", f"{net.min_overlap} px"),
        ("Ignored label value", str(meta.ignore_index)),
        ("Notes", meta.notes),
    ]
    meta_rows = "\n".join(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in rows)
    class_rows = "\n".join(
        f"<tr><td>{c.value}</td>"
        f'<td bgcolor="{_hex(c.color)}" style="background-color: {_hex(c.color)}">'
        f"&nbsp;&nbsp;&nbsp;&nbsp;&nbsp;&nbsp;</td>"
        f"<td>{esc(c.name)}</td><td>{_hex(c.color)}</td></tr>"
        for c in meta.classes)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>GLNet model: {esc(str(path))}</title>
<style>table {{border-collapse: collapse}} th {{text-align: left}}</style>
</head><body>
<h2>GLNet model</h2>
<table border="1" cellspacing="0" cellpadding="3">
{meta_rows}
</table>
<h3>Classes ({len(meta.classes)})</h3>
<table border="1" cellspacing="0" cellpadding="3">
<tr><th>Value</th><th>Colour</th><th>Name</th><th>RGB</th></tr>
{class_rows}
</table>
</body></html>
"""


def _hex(color):
    return "#{:02x}{:02x}{:02x}".format(*color)
