"""Removing what a killed worker left beside its outputs.

The engine writes every output through a temporary name beside it
(``glnet.contract.new_temp``) and removes it on SIGTERM; a worker that had to
be killed cannot, so the plugin removes files and folders matching
``glnet.contract.temp_pattern`` for each output, sidecars included, and
nothing else.
"""

from __future__ import annotations

import os
import shutil

from .lines import engine_contract


def remove_partial_outputs(outputs) -> list[str]:
    """Remove the temporary files a killed worker left beside ``outputs``; returns their paths."""
    removed = []
    for out in outputs:
        if not out:
            continue
        folder, name = os.path.split(os.path.abspath(str(out)))
        pattern = engine_contract().temp_pattern(name, sidecars=True)
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        for entry in entries:
            if not pattern.match(entry):
                continue
            path = os.path.join(folder, entry)
            try:
                if os.path.isdir(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
                removed.append(path)
            except OSError:
                pass
    return removed
