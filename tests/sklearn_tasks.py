"""The scikit-learn estimator for tests/test_joblib.py's TestScikitLearn.

Apart from tests/joblib_tasks.py: importing scikit-learn takes seconds, and every loky
worker that runs a task of a module imports that module, so only the workers of the
scikit-learn tests pay for it.
"""

from __future__ import annotations

from typing import Any

from sklearn.base import BaseEstimator, ClassifierMixin

from tests.joblib_tasks import log


class LoggingClassifier(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """Predicts the majority class; logs once per fit, naming its parameter."""

    def __init__(self, strength: float = 1.0) -> None:
        self.strength = strength

    def fit(self, features: Any, labels: Any) -> LoggingClassifier:
        import numpy

        log.info("fit with strength %s on %d rows", self.strength, len(labels))
        values, counts = numpy.unique(labels, return_counts=True)
        self.classes_ = values
        self.majority_ = values[counts.argmax()]
        return self

    def predict(self, features: Any) -> Any:
        import numpy

        return numpy.full(len(features), self.majority_)
