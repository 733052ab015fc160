"""Score a model: segment a scene (or a dataset folder) and score the masks.

Each scene is segmented by ``glnet.segment.scene`` (streamed window by window)
into a temporary mask that is removed afterwards, then scored as
``evaluate.mask.evaluate`` scores a mask. Reference values must be among the
model's classes; that is checked before any time is spent segmenting, where it can be.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..contract import NODATA
from ..errors import GlnetError
from ..metrics import ConfusionMatrix
from ..raster.labels import IGNORE, _exists
from .mask import Evaluation, block_step, evaluate
from .references import check_class_raster, open_dataset


def evaluate_model(model: str | Path, scene: str | Path, reference: str | Path, *,
                   ref_field: str | None = None, ref_layer: str | None = None,
                   ignore_classes: Sequence[int] = (), background: int | str | None = None,
                   block_size: int = 1024, segment_options=None,
                   progress: Callable[..., None] | None = None) -> Evaluation:
    """Segment ``scene`` with ``model`` and score the mask against ``reference``.

    The scene is segmented by ``glnet.segment.scene`` (streamed window by window) into
    a temporary mask that is removed afterwards, then scored exactly as
    ``evaluate(mask, reference)``. ``segment_options`` (a ``SegmentOptions``)
    sets bands, mode, device, threads and so on. Reference values must be among
    the model's classes.
    """
    import tempfile

    from ..config import SegmentOptions
    from ..modelfile import read_metadata
    from ..segment.scene import segment

    model_path, scene_path, ref_path = Path(model), Path(scene), Path(reference)
    for p in (model_path, scene_path, ref_path):
        if not _exists(p):
            raise GlnetError(f"{p}: file not found")
    meta = read_metadata(model_path)
    n = meta.net.num_classes
    _check_ignore(ignore_classes, n)
    ref_ds = open_dataset(ref_path)
    if ref_ds is not None:
        try:
            check_class_raster(ref_ds, ref_path, "reference raster")
            _check_raster_classes(ref_ds, ref_path, meta)
        finally:
            ref_ds.close()
    opts = segment_options or SegmentOptions()
    opts = opts.replace(overviews=False, style=False, probabilities=None, overwrite=True)
    report = progress or (lambda *a, **k: None)
    with tempfile.TemporaryDirectory(prefix="glnet-evaluate-") as tmp:
        mask = Path(tmp) / "mask.tif"
        segment(scene_path, model_path, mask, opts, progress=lambda f, *m: report(0.9 * f, *m))
        result = evaluate(mask, ref_path, ref_field=ref_field, ref_layer=ref_layer,
                          ignore_classes=ignore_classes, background=background,
                          block_size=block_size, progress=lambda f: report(0.9 + 0.1 * f))
    _check_matrix_classes(result, ref_path, meta)
    result.prediction = f"{scene_path} segmented with {model_path}"
    return result


def evaluate_model_on_dataset(model: str | Path, folder: str | Path, *,
                              ignore_classes: Sequence[int] = (), block_size: int = 1024,
                              segment_options=None, tiles: Sequence[int] | None = None,
                              progress: Callable[..., None] | None = None) -> Evaluation:
    """Segment every scene of a dataset folder (DeepGlobe, LoveDA or Dubai, as ``glnet train
    --dataset`` reads them) with ``model`` and score all of them in one confusion matrix.

    Each scene is segmented into a temporary mask and compared block by block
    with its labels; pixels without a label (LoveDA's 0, Dubai's black) or nodata
    are not counted. ``tiles`` picks some tiles of a Dubai folder (see
    ``datasets.dubai_scenes``).
    """
    import tempfile

    from rasterio.windows import Window

    from ..config import SegmentOptions
    from ..modelfile import read_metadata
    from ..segment.scene import segment
    from ..train.datasets import scenes_from_folder

    model_path, folder = Path(model), Path(folder)
    if not model_path.exists():
        raise GlnetError(f"{model_path}: file not found")
    meta = read_metadata(model_path)
    n = meta.net.num_classes
    _check_ignore(ignore_classes, n)
    scenes, classes = scenes_from_folder(folder, tiles=tiles)
    if [c.name for c in classes] != meta.class_names:
        raise GlnetError(f"{folder}: its classes ({', '.join(c.name for c in classes)}) are not "
                         f"the model's ({', '.join(meta.class_names)})")
    opts = segment_options or SegmentOptions()
    opts = opts.replace(overviews=False, style=False, probabilities=None, overwrite=True)
    report = progress or (lambda *a, **k: None)
    matrix = ConfusionMatrix(n, ignore_classes)
    skipped = 0
    with tempfile.TemporaryDirectory(prefix="glnet-evaluate-") as tmp:
        for k, scene in enumerate(scenes):
            def part(f, *m, k=k):
                report((k + 0.9 * f) / len(scenes), *m)

            mask_path = Path(tmp) / f"mask{k}.tif"
            segment(scene.path, model_path, mask_path, opts, progress=part)
            with open_dataset(mask_path) as mask:
                step = block_step(block_size, mask.block_shapes[0][0])
                for r in range(0, mask.height, step):
                    for c in range(0, mask.width, step):
                        window = Window(c, r, min(step, mask.width - c), min(step, mask.height - r))
                        pred = mask.read(1, window=window)
                        labels = scene.labels.read(window)
                        valid = (pred != NODATA) & (labels != IGNORE)
                        bad = valid & (labels >= n)
                        if bad.any():
                            raise GlnetError(f"{getattr(scene.labels, 'path', scene.path)}: label "
                                             f"value {int(labels[bad][0])} is outside the model's "
                                             f"classes 0..{n - 1}")
                        skipped += int(valid.size - np.count_nonzero(valid))
                        matrix.update(pred, labels, valid)
            mask_path.unlink()
            report((k + 1) / len(scenes))
    kind = f"{len(scenes)} labelled scene(s) of a dataset folder"
    return Evaluation(matrix, meta.class_names, f"{folder} segmented with {model_path}",
                      str(folder), kind, skipped, [])


def _check_ignore(ignore_classes: Sequence[int], n: int) -> None:
    bad = [c for c in ignore_classes if not 0 <= int(c) < n]
    if bad:
        raise GlnetError(f"--ignore-classes: {', '.join(map(str, bad))} not among the model's "
                         f"classes 0..{n - 1}")


def _describe_classes(meta) -> str:
    return ", ".join(f"{i} {name}" for i, name in enumerate(meta.class_names))


def _check_raster_classes(ds, path: Path, meta) -> None:
    """Refuse a reference raster with values that are not the model's classes (before
    spending time on segmenting)."""
    n = meta.net.num_classes
    nodata = ds.nodata if ds.nodata is not None else NODATA
    found: set[int] = set()
    for _, window in ds.block_windows(1):
        a = ds.read(1, window=window)
        a = a[(a != nodata) & (a != NODATA) & ((a < 0) | (a >= n))]
        if a.size:
            found.update(np.unique(a)[:5].tolist())
            break
    if found:
        raise GlnetError(f"{path}: reference has class values {', '.join(map(str, sorted(found)))} "
                         f"that the model does not have (its classes: {_describe_classes(meta)})")


def _check_matrix_classes(result: Evaluation, path: Path, meta) -> None:
    n = meta.net.num_classes
    extra = [c for c in range(n, result.matrix.num_classes) if result.matrix.ref_counts[c]]
    if extra:
        raise GlnetError(f"{path}: reference has class values {', '.join(map(str, extra[:5]))} "
                         f"that the model does not have (its classes: {_describe_classes(meta)})")
