"""GLNet land cover: a QGIS Processing plugin for GLNet segmentation models.

QGIS calls ``classFactory`` both in the desktop application (with ``iface``)
and under ``qgis_process`` (with ``iface`` None, then only ``initProcessing``).
Nothing here touches the GUI, and importing the package does no work: the
provider and the engine are imported when Processing asks for them.
"""

from qgis.core import QgsApplication


class GlnetPlugin:
    """Registers the GLNet Processing provider; the plugin has no other GUI."""

    def __init__(self, iface):
        self.iface = iface
        self.provider = None

    def initProcessing(self):
        if self.provider is not None:
            return
        from .provider import GlnetProvider

        self.provider = GlnetProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

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
