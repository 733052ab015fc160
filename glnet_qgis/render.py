"""A picture of a GLNet result drawn by QGIS's own map renderer, headless.

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 -m glnet_qgis.render \\
        --scene scene.tif --mask mask.tif --polygons polygons.gpkg -o qgis.png

(run from the repository root, or with it on PYTHONPATH). The scene is drawn as
RGB (bands 1, 2, 3, cumulative-cut stretch), the mask over it, semi-transparent,
with the style the segmenter writes beside it (``MASK.qml``; without one, a
paletted renderer from the mask's class tag or colour table), and the polygons
on top as outlines, categorised by class with the mask's colours. A title above
and a legend and scale bar below are painted around the map.

This is a tool for ``python -m glnet.demo`` and the README, not part of the
plugin: the plugin's ``classFactory`` and ``initProcessing`` never import it.
It runs in QGIS's Python, never in the engine's (the engine never imports QGIS).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

TITLE_H = 44
LEGEND_ROW_H = 26
MARGIN = 12


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m glnet_qgis.render", description=__doc__.splitlines()[0])
    p.add_argument("--scene", type=Path, required=True, help="the image raster (RGB)")
    p.add_argument("--mask", type=Path, required=True, help="the land-cover mask of glnet segment")
    p.add_argument("--polygons", type=Path, help="the polygons of glnet vectorize (optional)")
    p.add_argument("-o", "--output", type=Path, required=True, help="PNG to write")
    p.add_argument("--width", type=int, default=1000, help="map width in pixels (default 1000)")
    p.add_argument("--extent", type=_extent, metavar="XMIN,YMIN,XMAX,YMAX",
                   help="part of the scene to draw, in the scene's CRS (default: the whole scene)")
    p.add_argument("--opacity", type=float, default=0.6,
                   help="opacity of the mask over the scene (default 0.6)")
    p.add_argument("--title", help="title above the map (default: the mask's file name)")
    p.add_argument("--palette", action="store_true",
                   help="write a 256-colour PNG (about a fifth of the size; for pictures kept "
                        "in git)")
    return p.parse_args(argv)


def _extent(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or values[0] >= values[2] or values[1] >= values[3]:
        raise argparse.ArgumentTypeError(f"expected xmin,ymin,xmax,ymax, got {text!r}")
    return values


def main(argv=None) -> int:
    args = parse_args(argv)
    for path in (args.scene, args.mask, args.polygons):
        if path is not None and not path.is_file():
            print(f"render: {path}: no such file", file=sys.stderr)
            return 1
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from qgis.core import QgsApplication

    # A throwaway profile: rendering writes nothing into the user's QGIS settings.
    with tempfile.TemporaryDirectory(prefix="glnet-render-") as profile:
        QgsApplication.setPrefixPath("/usr", True)
        app = QgsApplication([], True, profile)
        app.initQgis()
        try:
            message = render(args)
        finally:
            app.exitQgis()
    print(message)
    return 0


def render(args: argparse.Namespace) -> str:
    from qgis.core import (
        Qgis,
        QgsMapRendererParallelJob,
        QgsMapSettings,
        QgsRasterLayer,
        QgsRectangle,
        QgsUnitTypes,
        QgsVectorLayer,
    )
    from qgis.PyQt.QtCore import QSize, Qt
    from qgis.PyQt.QtGui import QColor, QFontMetrics, QImage, QPainter

    scene = QgsRasterLayer(str(args.scene), "scene")
    if not scene.isValid():
        raise SystemExit(f"render: {args.scene}: QGIS cannot read it")
    style_scene(scene)

    mask = QgsRasterLayer(str(args.mask), "land cover")
    if not mask.isValid():
        raise SystemExit(f"render: {args.mask}: QGIS cannot read it")
    style_source = style_mask(mask, args.mask)
    mask.renderer().setOpacity(args.opacity)
    classes = mask_legend(mask)

    layers = [mask, scene]
    polygon_count = None
    if args.polygons is not None:
        polygons = QgsVectorLayer(str(args.polygons), "polygons", "ogr")
        if not polygons.isValid():
            raise SystemExit(f"render: {args.polygons}: QGIS cannot read it")
        style_polygons(polygons, classes)
        polygon_count = polygons.featureCount()
        layers.insert(0, polygons)

    if args.extent:
        extent = QgsRectangle(*args.extent)
    else:
        extent = scene.extent()
    width = args.width
    height = max(1, round(width * extent.height() / max(extent.width(), 1e-12)))

    settings = QgsMapSettings()
    settings.setLayers(layers)
    settings.setDestinationCrs(scene.crs())
    settings.setOutputSize(QSize(width, height))
    settings.setOutputDpi(96)
    settings.setExtent(extent)
    settings.setBackgroundColor(QColor(255, 255, 255))
    settings.setFlag(Qgis.MapSettingsFlag.Antialiasing, True)
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    errors = job.errors()
    if errors:
        raise SystemExit("render: " + "; ".join(f"{e.layerID}: {e.message}" for e in errors))
    map_image = job.renderedImage()

    # The map between a title and a legend with a scale bar.
    legend_cols = max(1, min(len(classes), max(1, (width - 2 * MARGIN) // 160)))
    legend_rows = math.ceil(len(classes) / legend_cols) if classes else 0
    legend_h = (legend_rows + 2) * LEGEND_ROW_H + MARGIN
    full = QImage(width + 2 * MARGIN, TITLE_H + height + legend_h, QImage.Format_RGB32)
    full.fill(QColor(255, 255, 255))
    painter = QPainter(full)
    painter.setRenderHint(QPainter.Antialiasing, True)
    painter.setRenderHint(QPainter.TextAntialiasing, True)
    font = painter.font()
    font.setFamily("DejaVu Sans")
    font.setPixelSize(18)
    font.setBold(True)
    painter.setFont(font)
    painter.setPen(QColor(30, 30, 30))
    title = args.title or f"{args.mask.name}: GLNet land cover"
    while font.pixelSize() > 11 and QFontMetrics(font).horizontalAdvance(title) > width:
        font.setPixelSize(font.pixelSize() - 1)  # a long title: a smaller font, not a cut one
        painter.setFont(font)
    painter.drawText(MARGIN, 0, width, TITLE_H, Qt.AlignLeft | Qt.AlignVCenter, title)
    painter.drawImage(MARGIN, TITLE_H, map_image)
    painter.setPen(QColor(120, 120, 120))
    painter.drawRect(MARGIN, TITLE_H, width - 1, height - 1)

    font.setBold(False)
    font.setPixelSize(13)
    painter.setFont(font)
    top = TITLE_H + height + MARGIN // 2
    col_w = (width) // legend_cols
    for i, (_, label, color) in enumerate(classes):
        x = MARGIN + (i % legend_cols) * col_w
        y = top + (i // legend_cols) * LEGEND_ROW_H
        painter.setPen(QColor(color).darker(150))
        painter.setBrush(QColor(color))
        painter.drawRect(x, y + 5, 26, 15)
        painter.setPen(QColor(30, 30, 30))
        painter.drawText(x + 34, y, col_w - 38, LEGEND_ROW_H, Qt.AlignLeft | Qt.AlignVCenter, label)
    painter.setBrush(Qt.NoBrush)

    # A scale bar (projected CRSs in metres), then a line saying how the picture was drawn.
    y = top + legend_rows * LEGEND_ROW_H + 2
    units = settings.destinationCrs().mapUnits()
    if units == QgsUnitTypes.DistanceMeters:
        metres_per_px = extent.width() / width
        length = nice_length(metres_per_px * width / 5)
        bar_px = round(length / metres_per_px)
        painter.fillRect(MARGIN, y + 9, bar_px, 6, QColor(30, 30, 30))
        painter.setPen(QColor(30, 30, 30))
        text = f"{length / 1000:g} km" if length >= 1000 else f"{length:g} m"
        painter.drawText(MARGIN + bar_px + 8, y, 120, LEGEND_ROW_H - 2,
                         Qt.AlignLeft | Qt.AlignVCenter, text)
    y += LEGEND_ROW_H
    polygons_text = "" if polygon_count is None else f"; {polygon_count:,} polygons outlined"
    note = (f"QGIS {Qgis.QGIS_VERSION.split('-')[0]} map renderer; mask style {style_source}, "
            f"opacity {args.opacity:g}{polygons_text}; {scene.crs().authid() or 'no CRS'}")
    font.setPixelSize(12)
    painter.setFont(font)
    painter.setPen(QColor(90, 90, 90))
    painter.drawText(MARGIN, y, width, LEGEND_ROW_H - 4, Qt.AlignLeft | Qt.AlignVCenter, note)
    painter.end()

    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(f".{args.output.name}.part.png")
    try:
        if not full.save(str(tmp), "PNG"):
            raise SystemExit(f"render: {args.output}: cannot write it")
        if args.palette:
            to_palette(tmp, full)
        os.replace(tmp, args.output)
    finally:
        tmp.unlink(missing_ok=True)
    return (f"wrote {args.output}: {full.width()} x {full.height()} px, {len(classes)} classes, "
            f"mask style {style_source}")


def to_palette(path: Path, image) -> None:
    """Rewrite the PNG at ``path`` with 256 colours (Pillow's fast octree; Qt's own
    conversion without Pillow)."""
    try:
        from PIL import Image
    except ImportError:
        from qgis.PyQt.QtCore import Qt
        from qgis.PyQt.QtGui import QImage

        image.convertToFormat(QImage.Format_Indexed8, Qt.DiffuseDither).save(str(path), "PNG")
        return
    with Image.open(path) as im:
        quantized = im.convert("RGB").quantize(colors=256, method=Image.FASTOCTREE)
    quantized.save(path, format="PNG", optimize=True)


def style_scene(layer) -> None:
    """Bands 1, 2, 3 as RGB (one band: grey), stretched with a cumulative cut."""
    from qgis.core import (
        QgsContrastEnhancement,
        QgsMultiBandColorRenderer,
        QgsRasterMinMaxOrigin,
        QgsSingleBandGrayRenderer,
    )

    provider = layer.dataProvider()
    if layer.bandCount() >= 3:
        layer.setRenderer(QgsMultiBandColorRenderer(provider, 1, 2, 3))
    else:
        layer.setRenderer(QgsSingleBandGrayRenderer(provider, 1))
    layer.setContrastEnhancement(QgsContrastEnhancement.StretchToMinimumMaximum,
                                 QgsRasterMinMaxOrigin.CumulativeCut)
    # Zoomed out, average the pixels (GDAL's resampling) rather than pick one in N: a scene
    # drawn at a fraction of its size then shows its texture, not aliasing noise.
    if hasattr(layer, "setResamplingStage") and hasattr(provider, "enableProviderResampling"):
        from qgis.core import Qgis

        layer.setResamplingStage(Qgis.RasterResamplingStage.Provider)
        provider.enableProviderResampling(True)
        provider.setZoomedOutResamplingMethod(provider.ResamplingMethod.Average)


def style_mask(layer, path: Path) -> str:
    """MASK.qml when the segmenter wrote one, else the class tag or colour table."""
    from .styles import mask_classes, paletted_renderer

    qml = path.with_suffix(".qml")
    if qml.is_file():
        message, ok = layer.loadNamedStyle(str(qml))
        if ok and layer.renderer() is not None and layer.renderer().type() == "paletted":
            return qml.name
    classes = mask_classes(str(path))
    if classes:
        layer.setRenderer(paletted_renderer(layer, classes))
        return "from the mask's class table"
    return "QGIS default"


def mask_legend(layer) -> list:
    """``[(value, label, QColor), ...]`` of the mask's paletted renderer (value None otherwise)."""
    renderer = layer.renderer()
    if hasattr(renderer, "classes"):
        return [(c.value, c.label or str(c.value), c.color) for c in renderer.classes()]
    return [(None, label, color) for label, color in renderer.legendSymbologyItems()]


def style_polygons(layer, legend: list) -> None:
    """Categorised by class_id (or class_name) with the mask's colours: outlines only."""
    from qgis.core import QgsCategorizedSymbolRenderer, QgsFillSymbol, QgsRendererCategory

    fields = layer.fields()
    by_id = fields.indexOf("class_id") >= 0 and all(v is not None for v, _, _ in legend)
    field = "class_id" if by_id else "class_name"
    if fields.indexOf(field) < 0:
        return
    categories = []
    for value, label, color in legend:
        symbol = QgsFillSymbol.createSimple({
            "style": "no", "outline_style": "solid", "outline_width": "0.3",
            "outline_width_unit": "MM", "joinstyle": "round",
            "outline_color": ",".join(str(v) for v in color.darker(140).getRgb())})
        categories.append(QgsRendererCategory(int(value) if by_id else label, symbol, label))
    layer.setRenderer(QgsCategorizedSymbolRenderer(field, categories))


def nice_length(target: float) -> float:
    """1, 2 or 5 times a power of ten, at most ``target``."""
    if target <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(target))
    for step in (5, 2, 1):
        if step * power <= target:
            return step * power
    return power


if __name__ == "__main__":
    sys.exit(main())
