"""Data sets behind one interface, registered by name.

A loader returns a `Splits` of numpy arrays (no torch here), split with a fixed seed,
stratified by class, plus the mask of training samples whose labels students may use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from edgekd.errors import DataError
from edgekd.registry import Registry

DATASETS: Registry[Callable[..., "Splits"]] = Registry("data set")


@dataclass(frozen=True)
class Splits:
    """Train/val/test arrays of one data set; inputs are float32 in the models' input layout."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    labelled: np.ndarray  # bool mask over the training split: labels students may see
    num_classes: int
    class_names: list[str] = field(default_factory=list)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample (without the batch dimension)."""
        return tuple(self.x_train.shape[1:])

    def fingerprint(self) -> str:
        """Content hash of the arrays (input of stage hashes and caches)."""
        import hashlib

        h = hashlib.sha256()
        for arr in (self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test, self.labelled):
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()

    def summary(self) -> dict[str, object]:
        return {
            "name": self.name,
            "train": len(self.y_train),
            "labelled": int(self.labelled.sum()),
            "val": len(self.y_val),
            "test": len(self.y_test),
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
        }


def load_data(name: str, *, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15,
              label_fraction: float = 1.0) -> Splits:
    """Load a registered data set and split it reproducibly."""
    return DATASETS[name](seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
                          label_fraction=label_fraction)


def stratified_splits(name: str, x: np.ndarray, y: np.ndarray, *, seed: int, val_fraction: float,
                      test_fraction: float, label_fraction: float, class_names: list[str]) -> Splits:
    """Split (x, y) into stratified train/val/test and pick a stratified labelled subset of train."""
    from sklearn.model_selection import train_test_split

    num_classes = int(y.max()) + 1
    try:
        x_rest, x_test, y_rest, y_test = train_test_split(
            x, y, test_size=test_fraction, stratify=y, random_state=seed)
        x_train, x_val, y_train, y_val = train_test_split(
            x_rest, y_rest, test_size=val_fraction / (1 - test_fraction), stratify=y_rest, random_state=seed + 1)
    except ValueError as exc:
        raise DataError(f"cannot split data set '{name}'", why=str(exc),
                        fix="use smaller val/test fractions or a larger data set") from None
    labelled = labelled_mask(y_train, label_fraction, seed=seed + 2)
    return Splits(name, x_train, y_train, x_val, y_val, x_test, y_test, labelled, num_classes, class_names)


def labelled_mask(y: np.ndarray, fraction: float, *, seed: int) -> np.ndarray:
    """A stratified boolean mask keeping `fraction` of each class (at least one sample per class)."""
    mask = np.zeros(len(y), dtype=bool)
    if fraction >= 1.0:
        mask[:] = True
        return mask
    rng = np.random.default_rng(seed)
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        keep = max(1, int(round(fraction * len(idx))))
        mask[rng.choice(idx, size=keep, replace=False)] = True
    return mask


@DATASETS.register("digits")
def digits(*, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15,
           label_fraction: float = 1.0) -> Splits:
    """scikit-learn's bundled 8×8 handwritten digits (1797 images, 10 classes) as 64 features in [0, 1].

    Flat, as scikit-learn ships them: an MLP student then needs no reshape (one operator fewer per call,
    which matters when a call costs a few microseconds); conv models reshape to 1×8×8 themselves.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.data.astype(np.float32) / 16.0
    y = bunch.target.astype(np.int64)
    return stratified_splits("digits", x, y, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
                             label_fraction=label_fraction, class_names=[str(c) for c in range(10)])
