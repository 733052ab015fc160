"""The contract between the engine and the QGIS plugin: what one writes and the other reads.

The plugin runs the engine's CLI in another Python (``glnet_qgis/worker.py``)
and reads its masks and polygons in QGIS; both sides take every name, format
and number they share from here, so that they agree by construction:

* the class list of a mask: ``ClassInfo``, the raster tag ``CLASSES_TAG``
  (``classes_json`` writes it, ``parse_classes`` reads it) and ``NODATA``;
* the QGIS styles made from the class colours: ``legend`` (the entries),
  ``mask_qml`` (a mask's paletted style), ``category_qml`` (polygons'
  categorised style), ``MASK_OPACITY`` and ``OUTLINE_WIDTH_MM``;
* what ``glnet --progress json COMMAND`` says: event lines on stderr
  (``progress_line``, ``message_line``; ``parse_event``), its verdict on
  stderr (``error_line``, ``internal_error_line``, ``cancelled_line``,
  ``warning_line``; ``is_verdict``, ``error_text``), the exit codes
  (``EXIT_*``), and, for train, segment and evaluate, the result as one JSON
  object on the last stdout line (``result_line``; ``parse_result``);
* the names of temporary files beside an output (``new_temp`` makes one,
  ``temp_pattern`` recognises them): the plugin removes what a killed worker
  left;
* ``TORCH_FREE_MODULES``: the engine modules the plugin imports in QGIS's own
  Python (``glnet_qgis/engine_loader.py``).

Only the standard library is imported here: QGIS's Python loads this module.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

# The engine modules that import nothing beyond the standard library (and each
# other): the plugin imports them inside QGIS, which has no torch or numpy.
TORCH_FREE_MODULES = ("errors", "contract", "config", "palette", "files", "modelfile")


# --------------------------------------------------------------------------- classes

# The nodata value of masks and probability rasters (class values are 0..254).
NODATA = 255
# The dataset tag of a mask (and of a probability raster) with its class list.
CLASSES_TAG = "GLNET_CLASSES"


@dataclass(frozen=True)
class ClassInfo:
    """One output class: its value in masks, its name and its RGB colour."""

    value: int
    name: str
    color: tuple[int, int, int]


def classes_json(classes: Iterable[ClassInfo]) -> str:
    """The ``GLNET_CLASSES`` tag value: a JSON list of ``{"value", "name", "color": [r, g, b]}``."""
    return json.dumps([{"value": c.value, "name": c.name, "color": list(c.color)}
                       for c in classes])


def parse_classes(text: str) -> list[ClassInfo]:
    """The classes of a ``GLNET_CLASSES`` tag value.

    Raises ``ValueError`` (with the text of what failed: bad JSON, a missing
    key, a value of the wrong type) if ``text`` is not such a list; each caller
    says which file it came from.
    """
    try:
        return [ClassInfo(int(c["value"]), str(c["name"]), tuple(int(v) for v in c["color"]))
                for c in json.loads(text)]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(str(exc)) from exc


# --------------------------------------------------------------------------- styles

# A mask's opacity in its style: the image shows through, the polygons' outlines on top.
MASK_OPACITY = 0.5
# Polygons are drawn as outlines of this width (millimetres) in the class colour, no fill.
OUTLINE_WIDTH_MM = 0.4


def legend(classes: Iterable[ClassInfo]) -> list[tuple[int, str, tuple[int, int, int, int]]]:
    """The entries of both styles: ``[(value, label, (r, g, b, alpha)), ...]``, opaque."""
    return [(c.value, c.name, (*c.color[:3], 255)) for c in classes]


def mask_qml(classes: Iterable[ClassInfo]) -> str:
    """A mask's QGIS style (QML): a paletted renderer with the class names as legend labels."""
    entries = "\n".join(
        f'        <paletteEntry value="{value}" alpha="{rgba[3]}" '
        f'color="#{rgba[0]:02x}{rgba[1]:02x}{rgba[2]:02x}" label={quoteattr(label)}/>'
        for value, label, rgba in legend(classes))
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22.0" styleCategories="Symbology">
  <pipe>
    <rasterrenderer type="paletted" band="1" opacity="{MASK_OPACITY:g}" alphaBand="-1" nodataColor="">
      <rasterTransparency/>
      <colorPalette>
{entries}
      </colorPalette>
    </rasterrenderer>
  </pipe>
</qgis>
"""


def category_qml(classes: Sequence[ClassInfo], attribute: str = "class_id") -> str:
    """A QGIS style (QML): a categorised renderer on ``attribute``, the class colour as
    outline (no fill: the mask or the image shows through)."""
    cats, symbols = [], []
    for i, (value, label, rgba) in enumerate(legend(classes)):
        rgb = ",".join(str(v) for v in rgba[:3])
        cats.append(f'      <category value="{value}" label={quoteattr(label)} '
                    f'symbol="{i}" render="true"/>')
        props = {"color": f"{rgb},0", "outline_color": f"{rgb},{rgba[3]}",
                 "outline_style": "solid", "outline_width": f"{OUTLINE_WIDTH_MM:g}",
                 "outline_width_unit": "MM", "style": "no", "joinstyle": "round"}
        options = "".join(f'<Option name="{k}" value="{v}" type="QString"/>'
                          for k, v in props.items())
        legacy = "".join(f'<prop k="{k}" v="{v}"/>' for k, v in props.items())
        symbols.append(
            f'      <symbol type="fill" name="{i}" alpha="1" clip_to_extent="1" force_rhr="0">'
            f'<layer class="SimpleFill" enabled="1" pass="0" locked="0">'
            f'<Option type="Map">{options}</Option>{legacy}</layer></symbol>')
    newline = "\n"
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22.0" styleCategories="Symbology">
  <renderer-v2 type="categorizedSymbol" attr="{escape(attribute)}" symbollevels="0" enableorderby="0" forceraster="0">
    <categories>
{newline.join(cats)}
    </categories>
    <symbols>
{newline.join(symbols)}
    </symbols>
  </renderer-v2>
</qgis>
"""


# --------------------------------------------------------------------------- progress and results

# ``progress(fraction, message=None)``, fraction in [0, 1]; it may raise to cancel.
ProgressFn = Callable[..., None]


def progress_line(fraction: float) -> str:
    """The stderr event line of a progress fraction: ``{"progress": 0.42}``."""
    return json.dumps({"progress": round(fraction, 4)})


def message_line(text: str) -> str:
    """The stderr event line of a message for the log: ``{"message": "..."}``."""
    return json.dumps({"message": text})


def parse_event(line: str) -> tuple[float | None, str | None] | None:
    """``(fraction, message)`` of an event line (either may be None), or None for any
    other line (plain text, a verdict, a warning)."""
    event = _json_object(line)
    if event is None:
        return None
    message = str(event["message"]) if "message" in event else None
    try:
        fraction = float(event["progress"]) if "progress" in event else None
    except (TypeError, ValueError):
        fraction = None
    return fraction, message


def result_line(result, **extra) -> str:
    """The last stdout line of ``glnet --progress json`` train, segment and evaluate: their
    result (a dict or a dataclass, plus ``extra`` keys) as one JSON object.

    Paths become strings, tuples lists, dict keys strings, and NaN or
    infinite numbers null.
    """
    value = _plain(result)
    if not isinstance(value, dict):
        raise TypeError(f"a result is a JSON object, not {type(result).__name__}")
    return json.dumps({**value, **_plain(extra)}, allow_nan=False)


def parse_result(line: str) -> dict | None:
    """The result object of a ``result_line`` (the last stdout line), or None if ``line``
    is not one."""
    return _json_object(line)


def _json_object(line: str) -> dict | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _plain(value):
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):  # numpy's integers too
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


# --------------------------------------------------------------------------- verdicts and exit codes

EXIT_OK = 0
EXIT_ERROR = 1       # an error the user can fix, said on one line (error_line)
EXIT_USAGE = 2       # a usage error (argparse's)
EXIT_CANCELLED = 130  # stopped by SIGTERM or Ctrl+C, temporary files removed (cancelled_line)

# The run's own last word on stderr: ``glnet COMMAND: error: TEXT`` or ``glnet COMMAND: cancelled``.
_VERDICT = re.compile(r"^glnet [\w-]+: (error: |cancelled$)")


def _prefix(command: str) -> str:
    return f"glnet {command}: "


def error_line(command: str, text: str) -> str:
    """The stderr line of a failed run (exit ``EXIT_ERROR``)."""
    return f"{_prefix(command)}error: {text}"


def internal_error_line(command: str, text: str) -> str:
    """The stderr line of an unexpected failure (a bug, or a library's own words)."""
    return f"{_prefix(command)}internal error: {text} (run with --debug for the traceback)"


def cancelled_line(command: str) -> str:
    """The stderr line of a cancelled run (exit ``EXIT_CANCELLED``)."""
    return f"{_prefix(command)}cancelled"


def warning_line(command: str, text: str) -> str:
    """A warning on stderr; the run goes on."""
    return f"{_prefix(command)}warning: {text}"


def is_verdict(line: str) -> bool:
    """Whether ``line`` is an ``error_line`` or a ``cancelled_line`` of any command."""
    return _VERDICT.match(line) is not None


def error_text(command: str, line: str) -> str | None:
    """What a stderr line of ``glnet COMMAND`` says: TEXT of ``glnet COMMAND: error: TEXT``,
    the rest of any other ``glnet COMMAND: ...`` line (``internal error: ...``,
    ``cancelled``), None for other lines."""
    prefix = _prefix(command)
    if line.startswith(prefix + "error: "):
        return line[len(prefix + "error: "):]
    if line.startswith(prefix):
        return line[len(prefix):]
    return None


# --------------------------------------------------------------------------- temporary names
#
# Every temporary file or folder of an output OUT is hidden beside it and named
# ``.OUT.XXXXXXXX<suffix>`` (``new_temp``; GDAL may add its sidecars to it).
# The work folder of a resumable segment run, ``.OUT.glnet-work``
# (``files.work_folder``), is not temporary: a later run finds it again.

TEMP_SUFFIXES = (".part", ".tiled.tif", ".ptiled.tif", ".work.tif", ".pwork.tif", ".parts",
                 ".work")
_RANDOM = r"[A-Za-z0-9_]{8}"
_TEMP_END = r"\.(?:parts?|work|\w+\.tif)(?:\.(?:ovr|aux\.xml|msk|tmp))*$"


def temp_prefix(path: str | Path) -> str:
    """``.NAME.``: how the temporary names of an output ``NAME`` begin."""
    return f".{Path(path).name}."


def new_temp(beside: str | Path, suffix: str, folder: bool = False) -> Path:
    """A new empty temporary file (or folder) beside ``beside``, named ``.NAME.XXXXXXXX<suffix>``.

    ``suffix`` is one of ``TEMP_SUFFIXES`` (``temp_pattern`` recognises only those).
    """
    if suffix not in TEMP_SUFFIXES:
        raise ValueError(f"temporary suffix {suffix!r} is not one of {TEMP_SUFFIXES}")
    beside = Path(beside)
    parent = beside.parent if str(beside.parent) else Path(".")
    if folder:
        return Path(tempfile.mkdtemp(prefix=temp_prefix(beside), suffix=suffix, dir=parent))
    fd, name = tempfile.mkstemp(prefix=temp_prefix(beside), suffix=suffix, dir=parent)
    os.close(fd)
    return Path(name)


def temp_pattern(name: str, sidecars: bool = False) -> re.Pattern[str]:
    """Matches the names of the temporary files and folders (``new_temp``) of an output
    file ``name``, with GDAL's sidecars of them (``.ovr``, ``.aux.xml``, ...).

    With ``sidecars``, also those of the files written beside the output:
    ``NAME.ckpt`` (a model's checkpoint) and ``STEM.EXT`` (a mask's style
    ``STEM.qml``).
    """
    names = re.escape(name)
    if sidecars:
        stem = os.path.splitext(name)[0]
        names = rf"{re.escape(name)}(?:\.ckpt)?|{re.escape(stem)}\.\w+"
    return re.compile(rf"^\.(?:{names})\.{_RANDOM}{_TEMP_END}")
