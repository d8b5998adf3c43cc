"""Defenses: training procedures (``train``) and inference wrappers (``wrap``)."""

from defenses.checkpoint import load_checkpoint, save_checkpoint
from defenses.pgd_at import PGDAT
from defenses.registry import DEFENSES, build_defense, describe_defenses
from defenses.standard import Standard
from defenses.training import TrainSettings, fit

__all__ = ["DEFENSES", "PGDAT", "Standard", "TrainSettings", "build_defense",
           "describe_defenses", "fit", "load_checkpoint", "save_checkpoint"]
