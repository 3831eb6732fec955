"""Re-export of the numpy reference executor (:mod:`bitflow.ir.reference`)."""

from ..ir.reference import preprocess, run

__all__ = ["preprocess", "run"]
