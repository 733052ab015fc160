"""Class names and colours of a mask's values, for the polygons' ``class_name`` and style.

A value's class comes, in this order, from the caller's classes, the mask's
``GLNET_CLASSES`` tag (``glnet.raster.masks``), or else is named "class N";
its colour from that class, the mask's colour table, or
``palette.default_colors``. Nothing here reads pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..contract import CLASSES_TAG
from ..modelfile import ClassInfo
from ..palette import default_colors


def mask_classes(dataset, classes: Sequence[ClassInfo] | None = None
                 ) -> tuple[dict[int, ClassInfo], dict[int, tuple[int, int, int]], list[str]]:
    """Class names and colours for a mask: ``(known classes, colour-table colours, warnings)``.

    ``classes`` (from the caller) wins; otherwise the mask's ``GLNET_CLASSES``
    tag (see ``glnet.raster.masks``); the mask's colour table gives colours of values
    without a class. Values known from neither are named "class N" and take
    ``palette.default_colors``.
    """
    notes: list[str] = []
    known: dict[int, ClassInfo] = {}
    if classes is not None:
        known = {int(c.value): c for c in classes}
    else:
        from ..raster.masks import read_classes

        try:
            stored = read_classes(dataset)
        except (ValueError, KeyError, TypeError) as exc:
            stored = None
            notes.append(f"{dataset.name}: ignoring its {CLASSES_TAG} tag ({exc}); "
                         "classes are named by value")
        known = {c.value: c for c in stored or ()}
    table: dict[int, tuple[int, int, int]] = {}
    try:
        table = {int(k): tuple(int(c) for c in v[:3]) for k, v in dataset.colormap(1).items()}
    except ValueError:  # no colour table
        pass
    return known, table, notes


def class_info(value: int, known: dict[int, ClassInfo],
               table: dict[int, tuple[int, int, int]]) -> ClassInfo:
    """The name and colour of class ``value`` (see ``mask_classes``)."""
    if value in known:
        return known[value]
    if value in table:
        color = table[value]
    elif value >= 0:
        color = default_colors(value + 1)[value]
    else:
        color = (128, 128, 128)
    return ClassInfo(value, f"class {value}", tuple(color))
