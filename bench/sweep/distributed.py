"""Several processes (hosts) in one sweep: ``jax.distributed`` set up for robustax.

Call :func:`initialize` (or pass ``robustax run --distributed``) in every process before
anything touches JAX. Then ``jax.devices()`` lists every process's devices, the engine shards
each evaluation batch over all of them (each process places only its own rows, with
``jax.make_array_from_process_local_data``; results are gathered to every process), every
process computes the same weights and cells, and only process 0 writes the run directory.

Where the coordinator is: arguments, else ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES``
/ ``JAX_PROCESS_ID`` in the environment, else JAX's cluster detection (SLURM, Open MPI, TPU
pods, Kubernetes, ...). CPU processes talk through gloo collectives.
"""

from __future__ import annotations

import os


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> tuple[int, int]:
    """Joins the processes of one run; returns (this process's index, process count)."""
    import jax

    env = os.environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    # Cross-process collectives on CPU devices (GPUs/TPUs use their own); a no-op elsewhere.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return jax.process_index(), jax.process_count()
