"""QGIS layer styles in a GeoPackage: the class colours as the layer's default style.

``write_layer_style`` stores a categorised renderer on ``class_id`` (QML from
``glnet.contract.category_qml``, and the same as an OGC SLD for other
clients) in QGIS's own ``layer_styles`` table, which QGIS applies when the
layer is loaded; the table is registered in ``gpkg_contents`` so the
GeoPackage stays valid. ``read_layer_style`` reads the default QML back.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

from ..contract import category_qml
from ..modelfile import ClassInfo

# QGIS's own layer_styles table (QgsOgrProviderUtils::saveStyle, GeoPackage).
_STYLES_TABLE = """CREATE TABLE IF NOT EXISTS layer_styles (
  id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
  f_table_catalog TEXT(256), f_table_schema TEXT(256), f_table_name TEXT(256),
  f_geometry_column TEXT(256), styleName TEXT(30), styleQML TEXT, styleSLD TEXT,
  useAsDefault BOOLEAN, description TEXT, owner TEXT(30), ui TEXT(30),
  update_time DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))"""


def category_sld(classes: Sequence[ClassInfo], layer: str, attribute: str = "class_id") -> str:
    """The same categorised style as an OGC SLD 1.1 document (for clients other than QGIS)."""
    rules = []
    for c in classes:
        hexcolor = "#{:02x}{:02x}{:02x}".format(*c.color)
        rules.append(
            f"<se:Rule><se:Name>{escape(c.name)}</se:Name><ogc:Filter><ogc:PropertyIsEqualTo>"
            f"<ogc:PropertyName>{escape(attribute)}</ogc:PropertyName>"
            f"<ogc:Literal>{c.value}</ogc:Literal></ogc:PropertyIsEqualTo></ogc:Filter>"
            f"<se:PolygonSymbolizer><se:Stroke><se:SvgParameter name=\"stroke\">{hexcolor}"
            f"</se:SvgParameter><se:SvgParameter name=\"stroke-width\">1.5</se:SvgParameter>"
            f"</se:Stroke></se:PolygonSymbolizer></se:Rule>")
    return ('<?xml version="1.0" encoding="UTF-8"?>'
            '<StyledLayerDescriptor xmlns="http://www.opengis.net/sld" '
            'xmlns:ogc="http://www.opengis.net/ogc" xmlns:se="http://www.opengis.net/se" '
            'version="1.1.0"><NamedLayer>'
            f"<se:Name>{escape(layer)}</se:Name><UserStyle><se:Name>{escape(layer)}</se:Name>"
            f"<se:FeatureTypeStyle>{''.join(rules)}</se:FeatureTypeStyle>"
            "</UserStyle></NamedLayer></StyledLayerDescriptor>")


def write_layer_style(gpkg: str | Path, layer: str, classes: Sequence[ClassInfo],
                      name: str = "land cover classes") -> None:
    """Store a categorised class style as ``layer``'s default style in a GeoPackage.

    Writes QGIS's ``layer_styles`` table (registered in ``gpkg_contents`` as an
    attributes table, so the GeoPackage stays valid); QGIS applies the default
    style when the layer is loaded.
    """
    con = sqlite3.connect(gpkg)
    try:
        with con:
            geom_col = con.execute("SELECT column_name FROM gpkg_geometry_columns "
                                   "WHERE table_name = ?", (layer,)).fetchone()
            con.execute(_STYLES_TABLE)
            con.execute("DELETE FROM layer_styles WHERE f_table_name = ?", (layer,))
            con.execute(
                "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, "
                "f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description, "
                "owner, ui) VALUES ('', '', ?, ?, ?, ?, ?, 1, ?, '', NULL)",
                (layer, geom_col[0] if geom_col else "geom", name, category_qml(classes),
                 category_sld(classes, layer),
                 "class colours written by glnet vectorize"))
            con.execute(
                "INSERT OR REPLACE INTO gpkg_contents (table_name, data_type, identifier, "
                "description, last_change) VALUES ('layer_styles', 'attributes', "
                "'layer_styles', '', strftime('%Y-%m-%dT%H:%M:%fZ','now'))")
            has_counts = con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                                     "name = 'gpkg_ogr_contents'").fetchone()
            if has_counts:
                count = con.execute("SELECT COUNT(*) FROM layer_styles").fetchone()[0]
                con.execute("INSERT OR REPLACE INTO gpkg_ogr_contents (table_name, "
                            "feature_count) VALUES ('layer_styles', ?)", (count,))
    finally:
        con.close()


def read_layer_style(gpkg: str | Path, layer: str) -> str | None:
    """The default QML style of ``layer`` in a GeoPackage, or None."""
    con = sqlite3.connect(f"file:{gpkg}?mode=ro", uri=True)
    try:
        row = con.execute("SELECT styleQML FROM layer_styles WHERE f_table_name = ? AND "
                          "useAsDefault ORDER BY id DESC", (layer,)).fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        con.close()
    return row[0] if row else None
