"""Processing algorithm ``glnet:evaluate``: ``glnet evaluate --json`` in the worker."""

import json

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMapLayer,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingUtils,
    QgsVectorLayer,
)

from .algorithm import VECTOR_EXTENSIONS, GlnetAlgorithm, advanced, int_list, join


class EvaluateAlgorithm(GlnetAlgorithm):
    """Scores a land-cover mask against reference labels (raster or polygons)."""

    INPUT = "INPUT"
    REFERENCE = "REFERENCE"
    REF_FIELD = "REF_FIELD"
    IGNORE_CLASSES = "IGNORE_CLASSES"
    BACKGROUND = "BACKGROUND"
    OUTPUT_JSON = "OUTPUT_JSON"
    MIOU = "MIOU"
    MEAN_F1 = "MEAN_F1"
    OVERALL_ACCURACY = "OVERALL_ACCURACY"
    PIXELS = "PIXELS"
    CLASS_IOU = "CLASS_IOU"

    def name(self):
        return "evaluate"

    def displayName(self):
        return self.tr("Evaluate segmentation")

    def shortDescription(self):
        return self.tr("Scores a land-cover mask against reference labels: mIoU, F1, accuracy.")

    def shortHelpString(self):
        return self.tr(
            "Scores a land-cover mask (a one-band raster of class values, such as the output of "
            "'Segment land cover') against reference labels: a raster of class values (warped "
            "onto the mask's grid with nearest neighbour if the grids differ) or polygons with "
            "a class field holding class values or names (rasterised onto the mask's grid).\n\n"
            "Results: mean intersection over union (mIoU), mean F1, overall accuracy, the "
            "number of pixels counted, the IoU of each class, and optionally everything "
            "(precision, recall, confusion matrix) as a JSON file. Nodata in either layer, and "
            "pixels outside the reference, are not counted; 'Classes left out' (e.g. 0 for "
            "DeepGlobe's 'unknown') are left out of the means."
        )

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer(
            self.INPUT, self.tr("Land-cover mask (prediction)")))
        self.addParameter(QgsProcessingParameterMapLayer(
            self.REFERENCE, self.tr("Reference labels (class raster or polygons)")))
        self.addParameter(QgsProcessingParameterString(
            self.REF_FIELD, self.tr("Class field of reference polygons (empty: class_id, "
                                    "else class_name)"), optional=True))
        self.addParameter(QgsProcessingParameterString(
            self.IGNORE_CLASSES, self.tr("Classes left out of the means, e.g. 0"), optional=True))
        self.addParameter(advanced(QgsProcessingParameterString(
            self.BACKGROUND, self.tr("Class of pixels outside all reference polygons (value or "
                                     "name; empty: not counted)"), optional=True)))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT_JSON, self.tr("Scores as JSON"), self.tr("JSON files (*.json)"),
            optional=True, createByDefault=False))
        self.addOutput(QgsProcessingOutputNumber(self.MIOU, self.tr("Mean IoU")))
        self.addOutput(QgsProcessingOutputNumber(self.MEAN_F1, self.tr("Mean F1")))
        self.addOutput(QgsProcessingOutputNumber(
            self.OVERALL_ACCURACY, self.tr("Overall accuracy")))
        self.addOutput(QgsProcessingOutputNumber(self.PIXELS, self.tr("Pixels counted")))
        self.addOutput(QgsProcessingOutputString(
            self.CLASS_IOU, self.tr("IoU per class (name: IoU, ...)")))

    def processAlgorithm(self, parameters, context, feedback):
        pred = self.raster_file(self.parameterAsRasterLayer(parameters, self.INPUT, context),
                                "prediction")
        ref_layer = self.parameterAsLayer(parameters, self.REFERENCE, context)
        if ref_layer is None:
            raise QgsProcessingException("no reference layer")
        args = [pred]
        if isinstance(ref_layer, QgsVectorLayer):
            path, layer_name = QgsProcessingUtils.convertToCompatibleFormatAndLayerName(
                ref_layer, False, "reference", list(VECTOR_EXTENSIONS), "gpkg", context, feedback)
            args.append(path)
            if layer_name:
                args += ["--ref-layer", layer_name]
        else:
            args.append(self.raster_file(ref_layer, "reference"))
        field = self.parameterAsString(parameters, self.REF_FIELD, context).strip()
        if field:
            args += ["--ref-field", field]
        ignore = int_list(self.parameterAsString(parameters, self.IGNORE_CLASSES, context),
                          "classes left out")
        if ignore:
            args.append(f"--ignore-classes={join(ignore)}")
        background = self.parameterAsString(parameters, self.BACKGROUND, context).strip()
        if background:
            args.append(f"--background={background}")
        args.append("--json")
        json_path = self.file_output(parameters, self.OUTPUT_JSON, context)

        result = self.run_engine("evaluate", args, feedback, echo_stdout=False)
        scores = result.result
        if not isinstance(scores, dict):
            raise QgsProcessingException(
                "the GLNet engine gave no scores: " + " | ".join(result.stdout_lines[-3:]))
        classes = [c for c in scores.get("classes", []) if not c.get("ignored")]
        class_iou = ", ".join(
            f"{c['name']}: {'n/a' if c.get('iou') is None else format(c['iou'], '.4f')}"
            for c in classes)
        for key in ("miou", "mean_f1", "overall_accuracy", "pixels"):
            feedback.pushInfo(f"{key}: {scores.get(key)}")
        feedback.pushInfo(f"IoU per class: {class_iou}")
        results = {
            self.MIOU: _number(scores.get("miou")),
            self.MEAN_F1: _number(scores.get("mean_f1")),
            self.OVERALL_ACCURACY: _number(scores.get("overall_accuracy")),
            self.PIXELS: _number(scores.get("pixels")),
            self.CLASS_IOU: class_iou,
        }
        if json_path:
            with open(json_path, "w", encoding="utf-8") as f:
                json.dump(scores, f, indent=2)
            results[self.OUTPUT_JSON] = json_path
        return results


def _number(value):
    return float("nan") if value is None else value
