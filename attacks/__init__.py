"""Pure, jit/vmap-compiled adversarial attacks: ``attack(logits_fn, params, x, y, eps, key)``.

The attacks know nothing of configs: the names a sweep config uses live in ``bench.sweep.registry``.
"""

from attacks import xla_flags

xla_flags.configure()  # before JAX starts a backend; see attacks/xla_flags.py

from attacks.advgan import AdvGAN, TrainedAdvGAN  # noqa: E402
from attacks.apgd import APGD, APGDDLR, APGDT  # noqa: E402
from attacks.autoattack import AutoAttack  # noqa: E402
from attacks.base import Attack, LogitsFn  # noqa: E402
from attacks.corruption import Corruption  # noqa: E402
from attacks.cw import CW  # noqa: E402
from attacks.deepfool import DeepFool  # noqa: E402
from attacks.fab import FAB  # noqa: E402
from attacks.fgsm import FGSM  # noqa: E402
from attacks.noise import Noise  # noqa: E402
from attacks.pgd import PGD  # noqa: E402
from attacks.square import Square  # noqa: E402
from attacks.threat import NORMS, distance, project, random_init  # noqa: E402
from attacks.transfer import Transfer  # noqa: E402

__all__ = ["APGD", "APGDDLR", "APGDT", "AdvGAN", "Attack", "AutoAttack", "CW", "Corruption", "DeepFool", "FAB",
           "FGSM", "LogitsFn", "NORMS", "Noise", "PGD", "Square", "TrainedAdvGAN", "Transfer",
           "distance", "project", "random_init"]
