"""Two local CPU processes (jax.distributed, coordinator on 127.0.0.1, gloo collectives) run
one sweep: the batch axis spans both processes' devices, only process 0 writes the run
directory, and its records equal a one-process run's, mask for mask."""

import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pandas as pd

from tests.conftest import digits_mlp_toml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = digits_mlp_toml("dist", eval_examples=30, batch_size=16, rest="""
    [[attacks]]
    name = "pgd"
    steps = 2
    unroll = 1
    eps = [0.05, 0.2]
""")

WORKER = textwrap.dedent("""
    import sys
    from bench.sweep import distributed
    distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
    import jax
    assert jax.device_count() == 2 and jax.local_device_count() == 1, jax.devices()
    from bench.sweep.config import load_config
    from bench.sweep.runner import run_sweep
    records = run_sweep(load_config(sys.argv[3]), sys.argv[4], progress=False)
    print("RECORDS", len(records), jax.process_index())
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_records_of_one(tmp_path):
    from bench.sweep.config import load_config
    from bench.sweep.runner import run_sweep

    cfg_path = tmp_path / "dist.toml"
    cfg_path.write_text(CONFIG)
    out = tmp_path / "two"
    addr = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    cache = os.path.join(tempfile.gettempdir(), f"robustax-xla-cache-{os.getuid()}")
    env.setdefault("JAX_COMPILATION_CACHE_DIR", cache)  # as tests/conftest.py
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, addr, str(i), str(cfg_path),
                               str(out)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    try:
        results = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr[-3000:]
    assert [r[0].split()[-1] for r in results] == ["0", "1"]

    one = run_sweep(load_config(cfg_path), tmp_path / "one", progress=False)
    two = pd.read_csv(out / "records.csv")
    assert len(one) == len(two) == 3
    cols = ["cell_id", "attack", "eps", "correct", "robust_acc"]
    pd.testing.assert_frame_equal(one[cols].reset_index(drop=True), two[cols], check_dtype=False)
    for cid in one["cell_id"]:
        np.testing.assert_array_equal(np.load(out / "masks" / f"{cid}.npy"),
                                      np.load(tmp_path / "one" / "masks" / f"{cid}.npy"))
    # only process 0 wrote: one environment entry, the same files
    assert len(json.loads((out / "environment.json").read_text())) == 1
    assert sorted(p.name for p in out.iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir())
