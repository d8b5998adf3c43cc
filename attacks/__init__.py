"""Pure, jit/vmap-compiled adversarial attacks: ``attack(logits_fn, params, x, y, eps, key)``.

The attacks know nothing of configs: the names a sweep config uses live in ``bench.registry``.
"""

from attacks.advgan import AdvGAN, TrainedAdvGAN
from attacks.apgd import APGD, APGDDLR, APGDT
from attacks.autoattack import AutoAttack
from attacks.base import Attack, LogitsFn
from attacks.cw import CW
from attacks.deepfool import DeepFool
from attacks.fab import FAB
from attacks.fgsm import FGSM
from attacks.pgd import PGD
from attacks.square import Square
from attacks.transfer import Transfer
from attacks.threat import NORMS, distance, project, random_init

__all__ = ["APGD", "AdvGAN", "TrainedAdvGAN", "APGDDLR", "APGDT", "Attack", "AutoAttack", "CW", "DeepFool", "FAB", "FGSM", "LogitsFn", "NORMS",
           "PGD", "Square", "Transfer", "distance", "project", "random_init"]
