"""VIP human-part propagation: mean intersection over union from a confusion matrix summed over all frames.

As the VIP / CIHP parsing evaluation (``fast_hist`` + ``per_class_iu``) used by CRW and its successors:
one [C, C] confusion matrix (rows ground truth, columns prediction) accumulates every pixel of every frame
of every video; the IoU of class c is ``hist[c, c] / (row_c + col_c - hist[c, c])``; mIoU is the mean over
the classes that occur (``nanmean``: a class absent from both ground truth and prediction has an undefined
IoU and is skipped). Ground-truth pixels outside ``0..C-1`` (e.g. 255) are ignored.
"""

import numpy as np

# 19 human parts + background (VIP, CIHP).
NUM_CLASSES = 20


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """[C, C] int64 counts of (ground truth, prediction) pixel pairs of two same-shape integer label maps."""
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    gt = gt.astype(np.int64).ravel()
    pred = pred.astype(np.int64).ravel()
    keep = (gt >= 0) & (gt < num_classes)
    if np.any((pred[keep] < 0) | (pred[keep] >= num_classes)):
        bad = pred[keep][(pred[keep] < 0) | (pred[keep] >= num_classes)][0]
        raise ValueError(f"prediction holds class {bad}; valid classes are 0..{num_classes - 1}")
    counts = np.bincount(num_classes * gt[keep] + pred[keep], minlength=num_classes**2)
    return counts.reshape(num_classes, num_classes)


def per_class_iou(hist: np.ndarray) -> np.ndarray:
    """[C] IoU per class from a [C, C] confusion matrix; NaN for classes absent from both sides."""
    tp = np.diag(hist).astype(np.float64)
    union = hist.sum(0) + hist.sum(1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return tp / union


def mean_iou(hist: np.ndarray) -> float:
    """nanmean of :func:`per_class_iou` (the VIP mIoU)."""
    iou = per_class_iou(hist)
    if np.all(np.isnan(iou)):
        raise ValueError("the confusion matrix is empty: no pixel was scored")
    return float(np.nanmean(iou))


def pixel_accuracy(hist: np.ndarray) -> float:
    """Fraction of scored pixels whose class is right."""
    return float(np.diag(hist).sum() / hist.sum())
