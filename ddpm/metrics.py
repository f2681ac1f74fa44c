"""Sample quality for class-conditional digits: does a classifier see the requested class?

A multinomial logistic regression is fit on the real 8x8 digits (scikit-learn's bundled set,
standardised pixels). Its accuracy on held-out real digits is the ceiling; its hit rate on
generated samples (the fraction it assigns to the class the sampler was asked for) is the
figure the demo prints, per class and overall.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

import reference

__all__ = ["DigitClassifier", "HitRate", "train_digit_classifier", "hit_rate", "format_hit_rate"]


@dataclass
class DigitClassifier:
    """A scikit-learn pipeline on 64 pixel values in the digits' 0..16 scale."""

    pipeline: object
    held_out_accuracy: float
    held_out_size: int

    def predict(self, images: torch.Tensor) -> np.ndarray:
        """images: (N, 1, 8, 8) in [-1, 1] (model space) -> (N,) int64 predicted digits."""
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a tensor, got {type(images).__name__}")
        if images.ndim != 4 or tuple(images.shape[1:]) != (1, 8, 8):
            raise ValueError(f"images must have shape (N, 1, 8, 8), got {tuple(images.shape)}")
        x = images.detach().to("cpu", torch.float64).nan_to_num(0.0).clamp(-1.0, 1.0)
        pixels = ((x + 1.0) * 8.0).reshape(x.shape[0], 64).numpy()  # [-1, 1] -> [0, 16]
        return self.pipeline.predict(pixels).astype(np.int64)


def train_digit_classifier(seed: int = 0, test_fraction: float = 0.2) -> DigitClassifier:
    """Fit StandardScaler + LogisticRegression on a stratified split of the real digits."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=test_fraction, random_state=seed, stratify=digits.target)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    pipeline.fit(x_train, y_train)
    accuracy = float((pipeline.predict(x_test) == y_test).mean())
    return DigitClassifier(pipeline, accuracy, int(len(y_test)))


@dataclass
class HitRate:
    """hits[k] of total[k] samples requested as class k were classified as k."""

    hits: np.ndarray
    total: np.ndarray
    confusion: np.ndarray  # (classes, classes): row = requested, column = predicted

    @property
    def per_class(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.total > 0, self.hits / np.maximum(self.total, 1), np.nan)

    @property
    def overall(self) -> float:
        return float(self.hits.sum() / max(int(self.total.sum()), 1))


def hit_rate(classifier: DigitClassifier, images: torch.Tensor, requested: torch.Tensor,
             num_classes: int = 10) -> HitRate:
    """How many samples the classifier puts in the class they were generated for.

    images: (N, 1, 8, 8) in [-1, 1]; requested: (N,) int64 class ids in [0, num_classes).
    """
    requested = torch.as_tensor(requested).reshape(-1)
    if requested.dtype != torch.int64:
        raise TypeError(f"requested must be int64 class ids, got {requested.dtype}")
    if requested.shape[0] != images.shape[0]:
        raise ValueError(f"requested has {requested.shape[0]} labels for {images.shape[0]} images")
    req = reference.check_class_labels(requested.cpu(), num_classes, "requested")
    predicted = classifier.predict(images)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (req, np.clip(predicted, 0, num_classes - 1)), 1)
    return HitRate(np.diag(confusion).copy(), confusion.sum(axis=1), confusion)


def format_hit_rate(result: HitRate, classifier: DigitClassifier | None = None,
                    class_names: list[str] | None = None) -> str:
    """A plain-text table: one row per class (hits / total, rate, most common wrong guess)."""
    k = result.hits.size
    names = class_names or [str(i) for i in range(k)]
    lines = ["class  hits/total   rate   most common miss",
             "-----  ----------  ------  ----------------"]
    for i in range(k):
        row = result.confusion[i].copy()
        row[i] = 0
        miss = f"{names[int(row.argmax())]} ({int(row.max())})" if row.max() > 0 else "-"
        rate = result.per_class[i]
        rate_s = "   -  " if np.isnan(rate) else f"{100 * rate:5.1f}%"
        lines.append(f"{names[i]:>5}  {int(result.hits[i]):>4}/{int(result.total[i]):<5}  {rate_s}  {miss}")
    lines.append(f"{'all':>5}  {int(result.hits.sum()):>4}/{int(result.total.sum()):<5}  "
                 f"{100 * result.overall:5.1f}%")
    if classifier is not None:
        lines.append(f"(classifier: logistic regression, {100 * classifier.held_out_accuracy:.1f}% "
                     f"accurate on {classifier.held_out_size} held-out real digits)")
    return "\n".join(lines)
