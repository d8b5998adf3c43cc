"""Pure, jit/vmap-compiled adversarial attacks: ``attack(logits_fn, params, x, y, eps, key)``.

The attacks know nothing of configs: the names a sweep config uses live in ``bench.registry``.
"""

from attacks.base import Attack, LogitsFn
from attacks.fgsm import FGSM
from attacks.pgd import PGD
from attacks.threat import NORMS, distance, project, random_init

__all__ = ["Attack", "FGSM", "LogitsFn", "NORMS", "PGD", "distance", "project", "random_init"]
