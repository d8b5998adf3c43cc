"""PyTorch tooling: twins, imports and speed figures. Nothing else in robustax depends on it.

Owns the PyTorch modules with RobustBench's state-dict layouts (``torch_models``), twins of
robustax's models on identical weights (``torch_twin``), ``robustax import-torch``
(``torch_import``), the cross-check against torchattacks (``crosscheck``), ``robustax speed``
(``speed``, with the plain-Flax reference model ``usercnn``) and the accelerator benchmark
(``gpu_bench``, ``gpu_record``, ``gpu_resnets``). torch is imported inside functions only: it
is an optional dependency.

Imports: bench.errors, bench.xla, bench.store, bench.sweep, attacks, models, defenses.
"""
