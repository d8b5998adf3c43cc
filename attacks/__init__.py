"""Pure, jit/vmap-compiled adversarial attacks: ``attack(logits_fn, params, x, y, eps, key)``."""

from attacks.base import Attack, LogitsFn
from attacks.fgsm import FGSM
from attacks.pgd import PGD
from attacks.registry import ATTACKS, attack_class, attack_name, build_attack, describe_attacks
from attacks.threat import NORMS, distance, project, random_init

__all__ = [
    "ATTACKS", "Attack", "FGSM", "LogitsFn", "NORMS", "PGD", "attack_class", "attack_name",
    "build_attack", "describe_attacks", "distance", "project", "random_init",
]
