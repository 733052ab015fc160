"""Segmentation accuracy from a streaming confusion matrix.

``ConfusionMatrix.update`` adds one block of predictions and references at a
time (int64 counts, so scenes of any size), and the scores are read off the
accumulated matrix:

* per-class IoU ``TP / (TP + FP + FN)``, precision ``TP / (TP + FP)``, recall
  ``TP / (TP + FN)`` and F1 ``2 TP / (2 TP + FP + FN)``;
* mIoU and mean F1: the mean over classes that are not in ``ignore_classes``
  and occur in the reference or the prediction. A class absent from both has
  IoU and F1 NaN (0 / 0) and is left out of the means; a class present in one
  but not the other scores 0 and is counted;
* overall accuracy: the share of counted pixels whose prediction equals the
  reference.

``ignore_classes`` only leaves classes out of the means (as DeepGlobe's class
0 "unknown" is left out of GLNet's mIoU): their pixels still count in the
matrix and the overall accuracy. Pixels that must not count at all (nodata)
are left out with ``update``'s ``valid`` mask.

Rows of the matrix are the reference class, columns the predicted class.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np


class ConfusionMatrix:
    """Counts of (reference, prediction) pairs for classes ``0 .. num_classes - 1``.

    Args:
        num_classes: number of classes.
        ignore_classes: classes left out of the mean scores (mIoU, mean F1).
    """

    def __init__(self, num_classes: int, ignore_classes: Iterable[int] = ()) -> None:
        if not isinstance(num_classes, (int, np.integer)) or not 1 <= num_classes <= 65536:
            raise ValueError(f"num_classes must be an integer from 1 to 65536, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.ignore_classes = tuple(sorted({int(c) for c in ignore_classes}))
        bad = [c for c in self.ignore_classes if not 0 <= c < self.num_classes]
        if bad:
            raise ValueError(f"ignored classes {bad} are not among the {self.num_classes} classes")

    # ----------------------------------------------------------------- counting

    def update(self, pred: np.ndarray, ref: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Add a block: ``pred`` and ``ref`` integer arrays of one shape.

        ``valid`` (boolean, same shape) selects the pixels to count; the rest
        are skipped. Every counted value must be a class (``0 .. num_classes -
        1``): a ``ValueError`` names the first offending values otherwise.
        """
        pred = np.asarray(pred)
        ref = np.asarray(ref)
        if pred.shape != ref.shape:
            raise ValueError(f"prediction {pred.shape} and reference {ref.shape} differ in shape")
        if valid is not None:
            valid = np.asarray(valid, dtype=bool)
            if valid.shape != pred.shape:
                raise ValueError(f"valid mask {valid.shape} does not match the arrays {pred.shape}")
            pred, ref = pred[valid], ref[valid]
        else:
            pred, ref = pred.ravel(), ref.ravel()
        if pred.size == 0:
            return
        for name, a in (("prediction", pred), ("reference", ref)):
            if a.dtype.kind not in "iub":
                raise ValueError(f"{name} values must be integers, got {a.dtype}")
            lo, hi = int(a.min()), int(a.max())
            if lo < 0 or hi >= self.num_classes:
                values = np.unique(a[(a < 0) | (a >= self.num_classes)])[:5]
                raise ValueError(f"{name} has values {', '.join(map(str, values))} outside the "
                                 f"classes 0..{self.num_classes - 1}")
        n = self.num_classes
        idx = ref.astype(np.int64) * n + pred.astype(np.int64)
        self.matrix += np.bincount(idx, minlength=n * n).reshape(n, n)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts (from a parallel worker, say) to this one."""
        if other.num_classes != self.num_classes:
            raise ValueError("cannot merge confusion matrices of different sizes")
        self.matrix += other.matrix
        return self

    # ----------------------------------------------------------------- scores

    @property
    def total(self) -> int:
        """Number of counted pixels."""
        return int(self.matrix.sum())

    @property
    def true_positives(self) -> np.ndarray:
        return np.diag(self.matrix).copy()

    @property
    def ref_counts(self) -> np.ndarray:
        """Pixels of each class in the reference (row sums)."""
        return self.matrix.sum(axis=1)

    @property
    def pred_counts(self) -> np.ndarray:
        """Pixels of each class in the prediction (column sums)."""
        return self.matrix.sum(axis=0)

    def iou(self) -> np.ndarray:
        """Per-class intersection over union; NaN for classes absent from both."""
        tp = self.true_positives
        return _ratio(tp, self.ref_counts + self.pred_counts - tp)

    def precision(self) -> np.ndarray:
        """Per-class precision (user's accuracy); NaN for classes never predicted."""
        return _ratio(self.true_positives, self.pred_counts)

    def recall(self) -> np.ndarray:
        """Per-class recall (producer's accuracy); NaN for classes absent from the reference."""
        return _ratio(self.true_positives, self.ref_counts)

    def f1(self) -> np.ndarray:
        """Per-class F1 (Dice); NaN for classes absent from both."""
        tp = self.true_positives
        return _ratio(2 * tp, self.ref_counts + self.pred_counts)

    def scored_classes(self) -> list[int]:
        """Classes that enter the means: not ignored and present in the reference or prediction."""
        present = (self.ref_counts + self.pred_counts) > 0
        return [c for c in range(self.num_classes) if present[c] and c not in self.ignore_classes]

    def miou(self) -> float:
        """Mean IoU over ``scored_classes``; NaN if there are none."""
        return _mean(self.iou(), self.scored_classes())

    def mean_f1(self) -> float:
        """Mean F1 over ``scored_classes``; NaN if there are none."""
        return _mean(self.f1(), self.scored_classes())

    def overall_accuracy(self) -> float:
        """Share of counted pixels predicted correctly; NaN if none were counted."""
        total = self.total
        return float(np.trace(self.matrix)) / total if total else math.nan

    # ----------------------------------------------------------------- output

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict:
        """Everything as plain JSON-ready values; NaN becomes None (JSON null)."""
        names = _names(class_names, self.num_classes)
        iou, f1, prec, rec = self.iou(), self.f1(), self.precision(), self.recall()
        refc, predc = self.ref_counts, self.pred_counts
        return {
            "pixels": self.total,
            "overall_accuracy": _json(self.overall_accuracy()),
            "miou": _json(self.miou()),
            "mean_f1": _json(self.mean_f1()),
            "ignore_classes": list(self.ignore_classes),
            "scored_classes": self.scored_classes(),
            "classes": [{"value": c, "name": names[c], "iou": _json(iou[c]), "f1": _json(f1[c]),
                         "precision": _json(prec[c]), "recall": _json(rec[c]),
                         "ref_pixels": int(refc[c]), "pred_pixels": int(predc[c]),
                         "ignored": c in self.ignore_classes}
                        for c in range(self.num_classes)],
            "confusion_matrix": self.matrix.tolist(),
            "confusion_matrix_axes": "rows: reference class, columns: predicted class",
        }

    def format_table(self, class_names: Sequence[str] | None = None, matrix: bool = True) -> str:
        """A plain-text report: per-class scores, the means, and (``matrix``) the matrix."""
        names = _names(class_names, self.num_classes)
        width = max(12, *(len(n) for n in names)) + 5
        iou, f1, prec, rec = self.iou(), self.f1(), self.precision(), self.recall()
        refc, predc = self.ref_counts, self.pred_counts
        total = max(self.total, 1)
        lines = [f"{'class':<{width}} {'IoU':>6} {'F1':>6} {'prec':>6} {'recall':>6} "
                 f"{'ref %':>7} {'pred %':>7}"]
        for c in range(self.num_classes):
            label = f"{c:>3} {names[c]}"
            note = "  (ignored)" if c in self.ignore_classes else ""
            lines.append(f"{label:<{width}} {_fmt(iou[c])} {_fmt(f1[c])} {_fmt(prec[c])} "
                         f"{_fmt(rec[c])} {100 * refc[c] / total:>7.2f} "
                         f"{100 * predc[c] / total:>7.2f}{note}")
        scored = self.scored_classes()
        lines.append("")
        ignored = f", ignoring {', '.join(map(str, self.ignore_classes))}" if self.ignore_classes else ""
        lines.append(f"mIoU              {_fmt(self.miou()).strip()}  "
                     f"(mean over {len(scored)} classes{ignored})")
        lines.append(f"mean F1           {_fmt(self.mean_f1()).strip()}")
        lines.append(f"overall accuracy  {_fmt(self.overall_accuracy()).strip()}")
        lines.append(f"pixels            {self.total:,}")
        if matrix:
            lines.append("")
            lines.append("confusion matrix (rows: reference, columns: prediction)")
            cells = [[f"{v:,}" for v in row] for row in self.matrix.tolist()]
            colw = max(5, *(len(v) for row in cells for v in row))
            lines.append(" " * width + " ".join(f"{c:>{colw}}" for c in range(self.num_classes)))
            for c, row in enumerate(cells):
                label = f"{c:>3} {names[c]}"
                lines.append(f"{label:<{width}}" + " ".join(f"{v:>{colw}}" for v in row))
        return "\n".join(lines)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _mean(values: np.ndarray, classes: Sequence[int]) -> float:
    picked = values[list(classes)]
    picked = picked[~np.isnan(picked)]
    return float(picked.mean()) if picked.size else math.nan


def _json(v: float) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v


def _fmt(v: float) -> str:
    return f"{'-':>6}" if math.isnan(float(v)) else f"{float(v):>6.3f}"


def _names(class_names: Sequence[str] | None, n: int) -> list[str]:
    names = list(class_names or [])
    return [names[c] if c < len(names) else f"class {c}" for c in range(n)]
