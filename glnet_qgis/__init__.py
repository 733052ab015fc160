"""GLNet land cover: a QGIS Processing plugin for GLNet segmentation models.

QGIS calls ``classFactory`` both in the desktop application (with ``iface``)
and under ``qgis_process`` (with ``iface`` None, then only ``initProcessing``).
Nothing here touches the GUI, and importing the package does no work: the
provider and the engine are imported when Processing asks for them.

When Processing starts the plugin and no Python that could hold the engine
exists, the plugin says so once, naming "Set up the GLNet engine": a message
bar in the desktop; without iface (qgis_process, PyQGIS scripts) a QgsMessageLog
line, and the same line on stderr, since qgis_process 3.22 shows no message log
(stderr leaves its ``--json`` output intact). The
check only looks for files (``discovery.engine_candidate_exists``), so loading
never waits for a Python to start.
"""

import sys

from qgis.core import Qgis, QgsApplication, QgsMessageLog

LOG_TAG = "GLNet"


class GlnetPlugin:
    """Registers the GLNet Processing provider; the plugin has no other GUI."""

    def __init__(self, iface):
        self.iface = iface
        self.provider = None
        self.engine_noticed = False

    def initProcessing(self):
        if self.provider is not None:
            return
        from .provider import GlnetProvider

        self.provider = GlnetProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)
        self.notice_missing_engine()

    def notice_missing_engine(self):
        """Say once that the engine is missing, naming the algorithm that sets it up."""
        from . import discovery

        if self.engine_noticed or discovery.engine_candidate_exists():
            return
        self.engine_noticed = True
        if self.iface is not None:
            self.iface.messageBar().pushMessage(LOG_TAG, discovery.NO_ENGINE_NOTICE, Qgis.Warning, 0)
        else:
            QgsMessageLog.logMessage(discovery.NO_ENGINE_NOTICE, LOG_TAG, Qgis.Warning)
            print(discovery.NO_ENGINE_NOTICE, file=sys.stderr, flush=True)

    def initGui(self):
        # The desktop calls initProcessing itself for plugins declaring
        # hasProcessingProvider=yes; calling it again here is harmless.
        self.initProcessing()

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None


def classFactory(iface):
    return GlnetPlugin(iface)
