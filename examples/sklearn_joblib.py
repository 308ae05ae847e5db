"""scikit-learn and joblib: a model's fit() logs in loky's workers, and the parent prints it.

``register_logexec()`` adds a joblib backend named "logexec". Inside
``joblib.parallel_config(backend="logexec")``, every ``n_jobs=`` in scikit-learn (here a grid
search) and every ``joblib.Parallel`` runs on joblib's usual loky workers, and what those
workers log is handled by this process's logging configuration (basicConfig's stream
handler below). When ``fit`` or ``Parallel`` returns, those records have been handled.

Without logexec, the "fitting" lines never appear: loky's workers start with an
unconfigured root logger at WARNING (joblib issue #1017).

Needs joblib and scikit-learn (pip install 'logexec[joblib]' scikit-learn).
Run: python3 examples/sklearn_joblib.py
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

try:
    import joblib
    import numpy
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.datasets import load_iris
    from sklearn.model_selection import GridSearchCV
except ImportError as missing:
    # Not an error of this example: it only needs optional packages.
    print(f"skipped: {missing.name or missing} is not installed (pip install 'logexec[joblib]' scikit-learn)")
    sys.exit(0)

from logexec.joblib import register_logexec

log = logging.getLogger("example.sklearn")


class NearestMeanClassifier(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """Predicts the class whose mean is nearest; ``shrink`` pulls the means together."""

    def __init__(self, shrink: float = 0.0) -> None:
        self.shrink = shrink

    def fit(self, features: Any, labels: Any) -> NearestMeanClassifier:
        log.info("fitting shrink=%.1f on %d rows in process %d", self.shrink, len(labels), os.getpid())
        self.classes_ = sorted(set(labels))
        overall = features.mean(axis=0)
        self.means_ = [
            (1 - self.shrink) * features[labels == label].mean(axis=0) + self.shrink * overall
            for label in self.classes_
        ]
        return self

    def predict(self, features: Any) -> Any:
        distances = numpy.stack([((features - mean) ** 2).sum(axis=1) for mean in self.means_])
        return numpy.asarray(self.classes_)[distances.argmin(axis=0)]


def square(number: int) -> int:
    log.info("squaring %d in process %d", number, os.getpid())
    return number * number


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)6d %(name)s: %(message)s")
    register_logexec()
    features, labels = load_iris(return_X_y=True)
    with joblib.parallel_config(backend="logexec", n_jobs=2):
        search = GridSearchCV(NearestMeanClassifier(), {"shrink": [0.0, 0.5]}, cv=3, n_jobs=2)
        search.fit(features, labels)
        # Every "fitting" line above was printed before fit() returned.
        log.info("best: %s, accuracy %.2f", search.best_params_, search.best_score_)
        squares = joblib.Parallel()(joblib.delayed(square)(number) for number in range(4))
        squares_from_lambda = joblib.Parallel()(joblib.delayed(lambda number: number**2)(n) for n in range(4))
    print(f"squares: {squares}, from a lambda: {squares_from_lambda}")


if __name__ == "__main__":
    main()
