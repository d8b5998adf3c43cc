"""Defenses: training procedures (``train``) and inference wrappers (``wrap``).

The config names that map to them live in ``bench.registry``.
"""

from defenses.base import InferenceWrapper, TrainingDefense, is_wrapper
from defenses.checkpoint import checkpoint_bytes, variables_from_bytes
from defenses.pgd_at import PGDAT
from defenses.standard import Standard
from defenses.training import TrainSettings, fit

__all__ = ["InferenceWrapper", "PGDAT", "Standard", "TrainSettings", "TrainingDefense",
           "checkpoint_bytes", "fit", "is_wrapper", "variables_from_bytes"]
