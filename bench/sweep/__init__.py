"""The sweep: a TOML config turned into a plan, and the plan turned into records.

Owns configs and their option coercion (``config``, ``options``), the name registries
(``registry``), the plan with each cell's identity (``plan``), the compiled evaluators
(``engine``), the one unit evaluator and record constructor (``unit``), the runner
(``runner``), data sets (``data``), weights users bring (``weights``), several processes
(``distributed``) and the Python API (``api``: ``bench.evaluate`` runs a one-unit plan
through the same unit evaluator as a sweep).

Imports: bench.errors, bench.xla, bench.store, bench.security, attacks, models, defenses.
"""
