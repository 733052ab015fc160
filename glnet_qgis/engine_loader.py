"""Access to the torch-free part of the glnet engine from inside QGIS.

QGIS's Python has no torch, so the plugin uses only the engine modules that
need nothing beyond the standard library, ``glnet.contract.TORCH_FREE_MODULES``
(``glnet.contract`` itself, ``glnet.modelfile`` and what it imports). They come
from, in this order:

1. an installed ``glnet`` (the zip's wheel or the source tree pip-installed into
   QGIS's Python);
2. ``<plugin>/engine/``, the copy of the engine source that the plugin zip
   carries (``make plugin``);
3. ``<plugin>/../core/``, the repository itself, when QGIS_PLUGINPATH names
   the repository root (development).

Cases 2 and 3 load the folder as the package ``glnet`` without putting
anything on ``sys.path``; its other modules (which import torch) are never
imported by the plugin.
"""

import importlib
import importlib.util
import os
import sys

PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))
ENGINE_DIRS = (
    os.path.join(PLUGIN_DIR, "engine"),
    os.path.join(os.path.dirname(PLUGIN_DIR), "core"),
)


def _engine_dir():
    for folder in ENGINE_DIRS:
        if all(os.path.isfile(os.path.join(folder, name))
               for name in ("__init__.py", "contract.py", "modelfile.py", "errors.py")):
            return folder
    return None


def _load_package(folder):
    spec = importlib.util.spec_from_file_location(
        "glnet", os.path.join(folder, "__init__.py"), submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules["glnet"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["glnet"]
        raise
    return module


def import_engine():
    """The ``glnet`` package, with its torch-free modules (``contract``, ``modelfile``,
    ``errors``, ...) imported.

    Raises ImportError, with what to do about it, when no engine is found.
    """
    if "glnet" not in sys.modules:
        try:
            importlib.import_module("glnet")
        except ModuleNotFoundError as exc:
            if exc.name != "glnet":
                raise
            folder = _engine_dir()
            if folder is None:
                raise ImportError(
                    "the glnet engine was not found: install glnet-qgis into QGIS's Python, "
                    f"or reinstall the plugin with its engine folder ({ENGINE_DIRS[0]})"
                ) from None
            _load_package(folder)
    contract = importlib.import_module("glnet.contract")
    for name in contract.TORCH_FREE_MODULES:
        importlib.import_module(f"glnet.{name}")
    return sys.modules["glnet"]
