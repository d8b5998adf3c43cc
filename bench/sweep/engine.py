"""The evaluation engine: compiled attack evaluators, batched over examples and ε.

One compiled program per (attack, model function) runs the attack at every ε of a list
(``vmap`` over ε) and returns per-example correctness. Randomness is a key per example
(``fold_in`` of the example's index), so results do not depend on batch size or order;
batches are padded to one shape (one compile) and sharded over all local devices.
The engine also checks what it is given: NaN logits and any adversarial example outside
its ε-ball or [0, 1] are errors, not numbers.

Random models (``logits_fn.random = True``, called as ``logits_fn(params, x, key)``, e.g. a
random input transform) get every key from the engine, so results are a function of the
seed: scoring uses ``draws`` draws per example (:func:`draw_keys` of ``fold_in(score_key,
index)``; draw 0 is that key itself), the same for the clean cell and every attack at every
ε (so ε = 0 reproduces clean accuracy), and an example counts as correct only if it is in
every draw; the per-draw correctness is returned as ``info["draw_correct"]``; attacks get a
two-argument form whose ``params`` carry a per-example key and which draws afresh for every
query point (:func:`_keyed`), while attacks that pass keys themselves (APGD, FAB via
``attacks.base.apply_logits``) have their keys used as given.
"""

from __future__ import annotations

import collections
import functools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from attacks import base, checks, fastpath, losses, threat
from bench.errors import ConfigError, DataError, RobustaxError
from defenses import is_random

# Float32 slack for the ball check: projections are exact up to rounding.
_BALL_RTOL, _BALL_ATOL = 1e-5, 1e-6


def check_arrays(x: Any, y: Any, where: str = "data") -> tuple[np.ndarray, np.ndarray]:
    """Validates user arrays: float images NHWC in [0, 1] and int labels of the same length."""
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 4:
        raise DataError(f"{where}: images have shape {x.shape}; expected NHWC [N, H, W, C] "
                        f"(add a channel axis with x[..., None])")
    if len(x) == 0:
        raise DataError(f"{where}: there are no images (shape {x.shape}); pass at least one")
    if x.shape[1] in (1, 3, 4) and x.shape[3] not in (1, 3, 4):
        raise DataError(f"{where}: images have shape {x.shape}, which looks like NCHW; robustax "
                        f"takes NHWC [N, H, W, C] (use x.transpose(0, 2, 3, 1))")
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{where}: images have dtype {x.dtype}; expected floats in [0, 1] "
                        f"(divide uint8 images by 255)")
    for bad, what in ((np.isnan(x), "NaN"), (np.isinf(x), "infinite")):
        if bad.any():
            raise DataError(f"{where}: images contain {int(bad.sum()):,} {what} values (the "
                            f"first in image {int(np.argwhere(bad)[0][0])}); pass finite "
                            f"pixel values in [0, 1]")
    if x.min() < 0 or x.max() > 1:
        raise DataError(f"{where}: image values must be finite and in [0, 1] (found "
                        f"[{x.min():g}, {x.max():g}]); normalise inside the model")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: labels have shape {y.shape} and dtype {y.dtype}; expected "
                        f"integer labels of shape ({len(x)},)")
    return x.astype(np.float32), y.astype(np.int32)


def check_model(logits_fn: Callable, params: Any, x: np.ndarray, y: np.ndarray,
                where: str = "logits_fn") -> int:
    """Checks, by shape only (``jax.eval_shape``: nothing is computed), that
    ``logits_fn(params, x)`` takes these images and returns ``[N, K]`` logits with K ≥ 2, and
    that every label is in [0, K); returns K. Each problem is a one-line DataError."""
    args = (params, x[:1]) + ((jax.random.key(0),) if is_random(logits_fn) else ())
    try:
        out = jax.eval_shape(logits_fn, *args)
    except Exception as e:  # noqa: BLE001 - the user's model: any failure is a bad input
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DataError(f"{where}(params, x) fails on images of shape {x.shape[1:]} (NHWC): "
                        f"{type(e).__name__}: {first}; check the model's input size and "
                        f"channels") from None
    shape = getattr(out, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != 1 or shape[1] < 2:
        raise DataError(f"{where} returned {shape if shape is not None else type(out).__name__} "
                        f"for 1 image; expected logits of shape [N, num_classes] with at least "
                        f"2 classes")
    dtype = getattr(out, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise DataError(f"{where} returned logits of dtype {dtype}; attacks need float logits "
                        f"(their gradients of integer outputs are zero, so robust accuracy "
                        f"would equal clean): return the model's float scores, before any "
                        f"argmax or rounding")
    k = int(shape[1])
    if y.min() < 0 or y.max() >= k:
        raise DataError(f"labels must be in [0, {k}) for a model with {k} outputs; found "
                        f"[{y.min()}, {y.max()}]")
    return k


def _mesh() -> Mesh | None:
    devices = jax.devices()
    return Mesh(np.array(devices), ("batch",)) if len(devices) > 1 else None


def _padded_batch(batch_size: int, n: int) -> int:
    d = jax.device_count()
    b = min(batch_size, n)
    return -(-b // d) * d


# Compiled evaluators are cached per model function: a sweep reuses them across defenses and
# weights. The caches are bounded, so an API user passing a fresh lambda in a loop does not
# grow memory without end (each entry holds an XLA executable).
_CACHE_SIZE = 32

_DRAW_TAG = 0xD2A5  # fold_in tag of the keys of draws 1, 2, ... (draw 0 is the key itself)


def draw_keys(key: jax.Array, draws: int) -> jax.Array:
    """The ``draws`` keys one example of a random model is scored with: draw 0 is ``key``
    itself (so one draw is exactly the single draw scoring always used), draw d ≥ 1
    ``fold_in(fold_in(key, tag), d)``. A draw's key does not depend on how many draws there
    are, so more draws only add draws: the AND over them can only fall."""
    rest = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
        jax.random.fold_in(key, _DRAW_TAG), jnp.arange(1, draws))
    return jnp.concatenate([key[None], rest])


def check_draws(draws: Any, where: str = "draws") -> int:
    """``draws`` as an integer in [1, ``MAX_DRAWS``], else a one-line ConfigError (the check
    of ``[eval] draws`` too: :func:`attacks.checks.check_draws`)."""
    try:
        return checks.check_draws(where, draws)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _score_logits(logits_fn: Callable, params: Any, x: jax.Array, keys: jax.Array | None):
    """Logits for scoring: ``[N, K]`` of a deterministic model, called as is; ``[N, D, K]`` of
    a random one with keys ``[N, D]``: example i, draw d with ``keys[i, d]`` (so a draw does
    not depend on batching)."""
    if keys is None:
        return logits_fn(params, x)

    def one(xi, ki):
        return logits_fn(params, xi[None], ki)[0]

    if keys.shape[1] == 1:  # one draw: exactly the single-draw program (no draw axis inside)
        return jax.vmap(one)(x, keys[:, 0])[:, None]
    return jax.vmap(lambda xi, ks: jax.vmap(functools.partial(one, xi))(ks))(x, keys)


def _scored(logits: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(correct: ``[N]``, or ``[N, D]`` per draw of a random model; finite: ``[N]``)."""
    labels = y if logits.ndim == 2 else y[:, None]
    finite = jnp.all(jnp.isfinite(logits), axis=tuple(range(1, logits.ndim)))
    return jnp.argmax(logits, -1) == labels, finite


def _digest(z: jax.Array) -> jax.Array:
    """A uint32 hash of the bits of ``z`` (no gradient): distinct query points get distinct
    keys (up to 32-bit collisions), the same point the same key."""
    bits = jax.lax.bitcast_convert_type(
        jax.lax.stop_gradient(z).astype(jnp.float32), jnp.uint32).reshape(-1)
    idx = jnp.arange(bits.size, dtype=jnp.uint32)
    mult = (idx * jnp.uint32(0x9E3779B1) + jnp.uint32(0x7F4A7C15)) | jnp.uint32(1)
    h = jnp.sum(bits * mult, dtype=jnp.uint32)
    h = (h ^ (h >> 16)) * jnp.uint32(0x85EBCA6B)  # murmur3's finaliser
    h = (h ^ (h >> 13)) * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


_QUERY_TAG = 0x51E7  # fold_in tag of the per-example key a random model's queries derive from


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _keyed(logits_fn: Callable) -> Callable:
    """The form of a random ``logits_fn(params, x, key)`` that attacks get, with params
    ``(params, key)``: called with two arguments (PGD, FGSM, Square) it draws with
    ``fold_in(key, digest(x))``, a fresh draw for every new query point that depends only
    on the seed, the example and the point; called with a key (``apply_logits``: APGD, FAB)
    it uses that key."""
    def keyed(params_and_key, x, key=None):
        params, example_key = params_and_key
        if key is None:
            key = jax.random.fold_in(example_key, _digest(x))
        return logits_fn(params, x, key)

    keyed.random = True
    return keyed


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _clean_fn(logits_fn: Callable) -> Callable:
    def run(params, x, y, keys=None):
        return _scored(_score_logits(logits_fn, params, x, keys), y)

    return jax.jit(run)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _attack_fn(attack: Any, logits_fn: Callable, attack_logits_fn: Callable | None,
               reuse_logits: bool = True) -> Callable:
    """The compiled evaluator of one attack: per ε, correctness, finiteness, inside-the-ball
    and the attack's per-example info (``{}``, ``queries``, ``distance``, ...).

    Minimum-norm attacks (:class:`attacks.base.MinimumNorm`) run once; every ε is scored from the one
    minimal example found (``where(dist <= ε, x_min, x)``). Other attacks run per ε (a
    ``vmap`` axis). The score always comes from ``logits_fn``: from the logits the attack
    computed at its point (:class:`attacks.base.Scored`) when it ran on ``logits_fn`` itself
    and the model is deterministic (``reuse_logits``), else from another forward pass."""
    norm = attack.norm
    attacked = attack_logits_fn or logits_fn
    random_attack = is_random(attacked)
    if random_attack:
        attacked = _keyed(attacked)
    attacked = fastpath.fast(attacked)  # fast input gradients for any model (attacks/fastpath.py)
    reuse = (reuse_logits and attack_logits_fn is None and not random_attack
             and isinstance(attack, base.Scored))

    def attack_params(params, key):
        """What the attack passes to ``attacked``: a random model's params carry a key."""
        return (params, jax.random.fold_in(key, _QUERY_TAG)) if random_attack else params

    blind = isinstance(attack, base.ModelBlind)  # a corruption: no ball, only the box

    def score(params, x, y, x_adv, eps, score_keys, logits=None):
        if logits is None:
            logits = _score_logits(logits_fn, params, x_adv, score_keys)
        ok, finite = _scored(logits, y)
        inside = jnp.all((x_adv >= 0) & (x_adv <= 1), axis=(1, 2, 3))
        if not blind:
            dist = threat.distance(x_adv, x, norm)
            inside &= (dist <= eps * (1 + _BALL_RTOL) + _BALL_ATOL)
        return ok, finite, inside

    if isinstance(attack, base.MinimumNorm):
        def one_min(params, x, y, key):
            x_min, dist = attack.minimize(attacked, attack_params(params, key), x[None],
                                          y[None], key)
            return x_min[0], dist[0]

        def run(params, x, y, keys, eps_vec, score_keys=None):
            x_min, dist = jax.vmap(one_min, in_axes=(None, 0, 0, 0))(params, x, y, keys)

            def per_eps(eps):
                take = (dist <= eps).reshape((-1,) + (1,) * (x.ndim - 1))
                return (*score(params, x, y, jnp.where(take, x_min, x), eps, score_keys),
                        {"distance": dist})

            return jax.vmap(per_eps)(eps_vec)

        return jax.jit(run)

    def one(params, x, y, eps, key):
        p = attack_params(params, key)
        if reuse:
            x_adv, info, logits = attack.run_scored(attacked, p, x[None], y[None], eps, key)
            return x_adv[0], {k: v[0] for k, v in info.items()}, logits[0]
        if isinstance(attack, base.Recording):
            x_adv, info = attack.run(attacked, p, x[None], y[None], eps, key)
            return x_adv[0], {k: v[0] for k, v in info.items()}, None
        return attack(attacked, p, x[None], y[None], eps, key)[0], {}, None

    def per_eps(params, x, y, keys, score_keys, eps):
        x_adv, info, logits = jax.vmap(one, in_axes=(None, 0, 0, None, 0))(params, x, y, eps,
                                                                           keys)
        return (*score(params, x, y, x_adv, eps, score_keys, logits), info)

    def run(params, x, y, keys, eps_vec, score_keys=None):
        return jax.vmap(functools.partial(per_eps, params, x, y, keys, score_keys))(eps_vec)

    return jax.jit(run)


_POLL_SECONDS = 0.05


def interruptible(fn: Callable, *args: Any) -> Any:
    """``fn(*args)`` run on a worker thread while the main thread waits in slices of 50 ms,
    so Ctrl-C (SIGINT, delivered to the main thread) interrupts at once even while XLA
    compiles or runs a long program: a blocking wait inside a compiled call would defer the
    KeyboardInterrupt until the program ends. The worker is a daemon thread and is left to
    finish on its own (the CLI then exits with status 130; a Python session gets its prompt
    back while the abandoned call runs out in the background). Called from another thread,
    it just calls ``fn``."""
    if threading.current_thread() is not threading.main_thread():
        return fn(*args)
    box: dict[str, Any] = {}
    done = threading.Event()

    def work():
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - re-raised on the main thread
            box["error"] = e
        finally:
            done.set()

    worker = threading.Thread(target=work, name="robustax-device-call", daemon=True)
    worker.start()
    # Wait on the event in slices, not in Thread.join: an interrupt inside Thread.join can
    # mark a thread that still runs as stopped (CPython's bpo-45274 handling). A timed lock
    # wait returns as soon as the call ends (a sleep-and-poll loop woke up to 50 ms late,
    # 25 ms per call on average) and is interrupted by SIGINT like a sleep.
    try:
        while not done.wait(_POLL_SECONDS):
            pass
    except BaseException:
        _exit_early_if_abandoned()
        raise
    if "error" in box:
        raise box["error"]
    return box["value"]


@functools.cache
def _exit_early_if_abandoned() -> None:
    """After an interrupt left a compiled call running: at interpreter exit, leave at once
    (status 130) if it still runs, instead of finalizing under it (a daemon thread inside
    XLA when Python finalizes aborts the process)."""
    import atexit
    import os
    import sys

    def check():
        if any(t.name == "robustax-device-call" and t.is_alive() for t in threading.enumerate()):
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)

    atexit.register(check)


def _fetch(compiled: Callable, args: tuple) -> Any:
    """Runs a compiled program and brings its outputs to the host (the wait is here), whole
    on every process of a multi-process run (:func:`_host`)."""
    return jax.tree.map(_host, compiled(*args))


_EXECUTABLES: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
"""Compiled evaluators by (jitted function, argument shapes/dtypes/shardings), least
recently used first; at most ``_CACHE_SIZE`` entries."""


def _compiled(fn: Callable, args: tuple) -> tuple[Any, float]:
    """The compiled executable of ``fn`` for the shapes/dtypes/shardings of ``args``, and the
    seconds spent compiling (0 when it came from the cache: same model, other weights)."""
    leaves, treedef = jax.tree.flatten(args)
    key = (fn, treedef, tuple((np.shape(a), str(getattr(a, "dtype", type(a))),
                               str(getattr(a, "sharding", ""))) for a in leaves))
    if key in _EXECUTABLES:
        _EXECUTABLES.move_to_end(key)
        return _EXECUTABLES[key], 0.0
    t0 = time.perf_counter()
    compiled = interruptible(lambda: fn.lower(*args).compile())
    _EXECUTABLES[key] = compiled
    while len(_EXECUTABLES) > _CACHE_SIZE:
        _EXECUTABLES.popitem(last=False)
    return compiled, time.perf_counter() - t0


def _batches(n: int, b: int):
    for start in range(0, n, b):
        yield start, min(start + b, n)


def _pad(a: np.ndarray, b: int) -> np.ndarray:
    if len(a) == b:
        return a
    return np.concatenate([a, np.repeat(a[-1:], b - len(a), axis=0)])


class _Placer:
    """Puts batches on devices: sharded along the batch axis when there are several.

    With several processes (``jax.distributed.initialize()``), the mesh spans every global
    device and each process places only the rows its own devices hold, with
    ``jax.make_array_from_process_local_data``; replicated arrays are given whole."""

    def __init__(self):
        mesh = _mesh()
        self.batch = NamedSharding(mesh, P("batch")) if mesh else None
        self.repl = NamedSharding(mesh, P()) if mesh else None
        self.multi = jax.process_count() > 1

    def __call__(self, a, replicate=False):
        if self.batch is None:
            return jnp.asarray(a)
        sharding = self.repl if replicate else self.batch
        if not self.multi:
            return jax.device_put(a, sharding)
        a = np.asarray(a)
        return jax.make_array_from_process_local_data(sharding, _local_rows(a, sharding), a.shape)


def _local_rows(a: np.ndarray, sharding: NamedSharding) -> np.ndarray:
    """The rows of the global array ``a`` that this process's devices hold (all of ``a`` when
    replicated): one contiguous block, as the mesh orders devices by process."""
    if a.ndim == 0:
        return a
    spans = {(s[0].start or 0, len(a) if s[0].stop is None else s[0].stop)
             for s in sharding.addressable_devices_indices_map(a.shape).values()}
    lo, hi = min(s[0] for s in spans), max(s[1] for s in spans)
    return a[lo:hi]


def _host(a: jax.Array) -> np.ndarray:
    """The whole of a (possibly multi-process) result on this host."""
    if getattr(a, "is_fully_addressable", True):
        return np.asarray(a)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(a, tiled=True))


def _nan_error(what: str, count: int) -> RobustaxError:
    return RobustaxError(f"the model returned NaN/inf logits for {count} {what} examples; check "
                         f"its params and that it accepts images in [0, 1]")


_DEFAULT_SCORE_KEY = 0
"""Seed of the scoring key of a random model when the caller gives none (the Python API)."""


def _score_data(logits_fn: Callable, key: jax.Array | None, n: int, draws: int = 1) -> tuple:
    """(per-example, per-draw key data [N, D, ...], key impl) for scoring a random model,
    else (None, None): example i, draw d with ``draw_keys(fold_in(key, i), draws)[d]``."""
    if not is_random(logits_fn):
        return None, None
    key = jax.random.key(_DEFAULT_SCORE_KEY) if key is None else key
    keys = jax.vmap(draw_keys, in_axes=(0, None))(_example_keys(key, n), check_draws(draws))
    return np.asarray(jax.random.key_data(keys)), jax.random.key_impl(key)


def _draw_info(correct: np.ndarray, random: bool) -> tuple[np.ndarray, dict]:
    """(mask, info) from correctness ``[..., N]``, or ``[..., N, D]`` per draw of a random
    model: correct only if correct in every draw; info ``draw_correct`` keeps the draws."""
    if not random:
        return correct, {}
    return correct.all(-1), {"draw_correct": correct}


def clean_correct(logits_fn: Callable, params: Any, x: np.ndarray, y: np.ndarray,
                  batch_size: int = 500, key: jax.Array | None = None, draws: int = 1,
                  with_info: bool = False):
    """Per-example clean correctness, shape [N]. ``key`` is the scoring key of a random
    ``logits_fn``: example i is drawn ``draws`` times (:func:`draw_keys` of ``fold_in(key,
    i)``) and is correct only if it is in every draw; deterministic models ignore both. With
    ``with_info`` the result is ``(mask, info)``, info ``{"draw_correct": [N, D]}`` for a
    random model (``{}`` otherwise)."""
    score = _score_data(logits_fn, key, len(x), draws)
    mask, info = _draw_info(_clean(logits_fn, params, x, y, batch_size, *score),
                            score[0] is not None)
    return (mask, info) if with_info else mask


def _clean(logits_fn, params, x, y, batch_size, score_data, score_impl) -> np.ndarray:
    b = _padded_batch(batch_size, len(x))
    put = _Placer()
    fn = _clean_fn(logits_fn)
    params = jax.tree.map(lambda a: put(a, replicate=True), params)
    out = []
    for s, e in _batches(len(x), b):
        extra = () if score_data is None else (
            jax.random.wrap_key_data(put(_pad(score_data[s:e], b)), impl=score_impl),)
        ok, finite = interruptible(_fetch, fn, (params, put(_pad(np.asarray(x[s:e]), b)),
                                                put(_pad(y[s:e], b)), *extra))
        ok, finite = ok[: e - s], finite[: e - s]
        if not finite.all():
            raise _nan_error("clean", int((~finite).sum()))
        out.append(ok)
    return np.concatenate(out)


def _example_keys(key: jax.Array, n: int) -> jax.Array:
    """One key per example, ``fold_in(key, index)``: results never depend on batching."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(n))


def _run_attack(attack: Any, logits_fn: Callable, params: Any, x: np.ndarray, y: np.ndarray,
                eps: Sequence[float], keys: np.ndarray, impl: Any, batch_size: int,
                attack_logits_fn: Callable | None, score_data: np.ndarray | None = None,
                score_impl: Any = None, reuse_logits: bool = True
                ) -> tuple[np.ndarray, dict, float, float]:
    """Runs one (non-cascade) attack over ``x`` in padded batches with the given per-example
    key data (and, for a random ``logits_fn``, per-example, per-draw scoring key data):
    (correct [E, N] or, per draw, [E, N, D], info {name: [E, N]}, seconds, compile seconds)."""
    n = len(x)
    b = _padded_batch(batch_size, n)
    put = _Placer()
    fn = _attack_fn(attack, logits_fn, attack_logits_fn, reuse_logits)
    eps_arr = put(np.asarray(eps, np.float32), replicate=True)
    params = jax.tree.map(lambda a: put(a, replicate=True), params)

    def args(s, e):
        k = jax.random.wrap_key_data(put(_pad(keys[s:e], b)), impl=impl)
        extra = () if score_data is None else (
            jax.random.wrap_key_data(put(_pad(score_data[s:e], b)), impl=score_impl),)
        # np.asarray: a streamed split (bench.sweep.data.StreamedImages) is read here, one batch
        return params, put(_pad(np.asarray(x[s:e]), b)), put(_pad(y[s:e], b)), k, eps_arr, *extra

    compiled, compile_s = _compiled(fn, args(0, min(b, n)))
    out, infos = [], []
    t0 = time.perf_counter()
    for s, e in _batches(n, b):
        ok, finite, inside, info = interruptible(_fetch, compiled, args(s, e))
        ok, finite, inside = (a[:, : e - s] for a in (ok, finite, inside))
        if not finite.all():
            raise _nan_error("adversarial", int((~finite).sum()))
        if not inside.all():
            raise RobustaxError(f"attack {attack!r} returned {int((~inside).sum())} examples "
                                f"outside the ε-ball or [0, 1]; this is a bug in the attack")
        out.append(ok)
        infos.append({k: _host(v)[:, : e - s] for k, v in info.items()})
    seconds = time.perf_counter() - t0
    info = {k: np.concatenate([i[k] for i in infos], axis=1) for k in (infos[0] if infos else {})}
    return np.concatenate(out, axis=1), info, seconds, compile_s


def _bucket(count: int, batch_size: int) -> int:
    """Batch size for a cascade stage on ``count`` points: the next power of two (at least 8),
    capped at ``batch_size``, so later stages compile for a handful of shapes only."""
    return min(batch_size, max(8, 1 << max(count - 1, 0).bit_length()))


def _cascade(attack: Any, logits_fn: Callable, params: Any, x: np.ndarray, y: np.ndarray,
             eps: Sequence[float], key: jax.Array, batch_size: int,
             attack_logits_fn: Callable | None, score_key: jax.Array | None = None,
             draws: int = 1, clean: np.ndarray | None = None
             ) -> tuple[np.ndarray, dict, float, float]:
    """An ensemble run as AutoAttack does: each stage only on the points every earlier stage
    left robust, gathered into padded buckets. Per example, stage ``s`` gets the key
    ``fold_in(fold_in(key, index), s)``, exactly what ``attack.run`` uses on one example, so
    the cascade equals running every stage on every point and taking the per-example worst
    case. ``info["stage"]``: 0 robust, -1 misclassified clean, s ≥ 1 broken by stage s.

    A random model is scored per draw: a point is robust only while every draw classifies it
    correctly (``info["stage"]``: the first stage after which some draw does not). A stage's
    points do not depend on the draw they are scored with, so each stage runs on the points
    that some draw still holds robust, and ``info["draw_correct"]`` ``[E, N, D]`` is exactly
    what the cascade scored with draw d alone would give (per draw: clean, and correct at
    every stage's point while it was robust in that draw)."""
    n = len(x)
    impl = jax.random.key_impl(key)
    example_keys = _example_keys(key, n)
    score_data, score_impl = _score_data(logits_fn, score_key, n, draws)
    random = score_data is not None
    clean_draws = (_clean(logits_fn, params, x, y, batch_size, score_data, score_impl)
                   if clean is None else clean)
    clean = _draw_info(clean_draws, random)[0]
    masks, stages_out, per_draw = [], [], []
    seconds = compile_s = 0.0
    for e in eps:
        robust = clean.copy()
        correct = clean_draws.copy()  # per draw (a random model's), else the same as robust
        stage = np.where(clean, 0, -1).astype(np.int32)
        for s, (_, stage_attack) in enumerate(attack.stages(), start=1):
            idx = np.flatnonzero(correct.any(-1) if random else robust)
            if len(idx) == 0:
                break
            keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(example_keys[idx], s)
            ok, _, sec, comp = _run_attack(
                stage_attack, logits_fn, params, x[idx], y[idx], [e],
                np.asarray(jax.random.key_data(keys)), impl, _bucket(len(idx), batch_size),
                attack_logits_fn, None if score_data is None else score_data[idx], score_impl)
            seconds, compile_s = seconds + sec, compile_s + comp
            correct[idx] &= ok[0]
            broken = robust & ~_draw_info(correct, random)[0]
            robust[broken] = False
            stage[broken] = s
        masks.append(robust)
        stages_out.append(stage)
        per_draw.append(correct)
    info = {"stage": np.stack(stages_out), **_draw_info(np.stack(per_draw), random)[1]}
    return np.stack(masks), info, seconds, compile_s


def attack_correct(attack: Any, logits_fn: Callable, params: Any, x: np.ndarray,
                   y: np.ndarray, eps: Sequence[float], key: jax.Array,
                   batch_size: int = 500, attack_logits_fn: Callable | None = None,
                   with_info: bool = False, cascade: bool = True,
                   score_key: jax.Array | None = None, draws: int = 1,
                   clean: np.ndarray | None = None):
    """Per-example correctness under ``attack`` at every ε: ``(mask [E, N], seconds, compile_s)``.

    A model-blind transformation (:class:`attacks.base.ModelBlind`, a corruption at severity
    ``eps``) is scored as it is: correct on the corrupted image, whatever the clean prediction,
    and checked to stay in [0, 1] (it has no ball).

    The attack runs on ``attack_logits_fn`` when given (an adaptive stand-in such as BPDA for
    a non-differentiable defense) and is always scored on ``logits_fn``. ``seconds`` is the
    wall time of the attack itself; ``compile_s`` that of compilation. An attack with
    ``stages()`` (AutoAttack) runs as a cascade unless ``cascade=False``. With ``with_info``
    the result has a fourth element: the attack's per-example info ``{name: [E, N]}``
    (``queries`` for Square, ``distance`` for minimum-norm attacks, ``stage`` for cascades).

    Random models (``random = True``) are scored over ``draws`` draws per example from
    ``score_key`` (pass the key and draws their clean accuracy was measured with, so ε = 0
    reproduces it; without a key a fixed default key is used): an example is robust only if
    it is classified correctly, at x and at the attack's point, in every draw; the info then
    holds ``draw_correct`` ``[E, N, D]``. Attacks draw from ``key``.

    ``clean``: the clean correctness of these examples on this ``logits_fn`` and ``params``
    when the caller already has it (a sweep's clean cell), as :func:`clean_correct` computed it
    with the same ``score_key`` and ``draws`` (``[N]``, or per draw ``[N, D]``, its
    ``info["draw_correct"]``, for a random model); the clean pass is then not run again.
    """
    bad = [e for e in eps if not np.isfinite(e) or e < 0]
    if bad:  # the config and bench.evaluate check this first; a direct caller gets it here
        raise RobustaxError(f"eps = {bad[0]!r} is not a finite budget ≥ 0; give finite budgets "
                            f"in [0, 1] pixel units")
    if cascade and isinstance(attack, base.Cascade):
        masks, info, seconds, compile_s = _cascade(attack, logits_fn, params, x, y, eps, key,
                                                   batch_size, attack_logits_fn, score_key,
                                                   draws, _given_clean(clean, len(x), draws,
                                                                       logits_fn))
    else:
        score = _score_data(logits_fn, score_key, len(x), draws)
        correct, info, seconds, compile_s = _run_attack(
            attack, logits_fn, params, x, y, eps,
            np.asarray(jax.random.key_data(_example_keys(key, len(x)))),
            jax.random.key_impl(key), batch_size, attack_logits_fn, *score)
        # Robust means correct at x and at the attack's point (x is in every ball): an attack
        # that wanders from a misclassified x onto a correct point, as a blind one on a
        # masked or random defense can, must not count it (per draw for a random model). A
        # corruption (base.ModelBlind) is a distribution shift, not a search around x: its
        # accuracy is the corrupted images' own, as Hendrycks & Dietterich and RobustBench count it.
        if not isinstance(attack, base.ModelBlind):
            clean = _given_clean(clean, len(x), draws, logits_fn)
            if clean is None:
                clean = _clean(logits_fn, params, x, y, batch_size, *score)
            correct = correct & clean[None]
        masks, draw_info = _draw_info(correct, score[0] is not None)
        info = {**info, **draw_info}
    return (masks, seconds, compile_s, info) if with_info else (masks, seconds, compile_s)


def _given_clean(clean: Any, n: int, draws: int, logits_fn: Callable) -> np.ndarray | None:
    """A caller's clean correctness, checked to have the shape the engine would compute."""
    if clean is None:
        return None
    clean = np.asarray(clean)
    shape = (n, draws) if is_random(logits_fn) else (n,)
    if clean.shape != shape or clean.dtype != np.bool_:
        raise DataError(f"clean has shape {clean.shape} and dtype {clean.dtype}; expected "
                        f"booleans of shape {shape} (clean_correct's mask, or for a random "
                        f"model its info['draw_correct']), or pass clean=None")
    return clean


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _gradient_fn(logits_fn: Callable) -> Callable:

    def run(params, x, y, keys=None):
        def loss(z):
            logits = _score_logits(logits_fn, params, z, keys)
            if logits.ndim == 3:  # a random model: differentiated on its first draw
                logits = logits[:, 0]
            return jnp.sum(losses.cross_entropy(logits, y))

        g = jax.grad(loss)(x)
        return jnp.sum(g != 0, axis=tuple(range(1, x.ndim))), jnp.all(jnp.isfinite(g), (1, 2, 3))

    return jax.jit(run)


def zero_gradients(logits_fn: Callable, params: Any, x: np.ndarray, y: np.ndarray,
                   batch_size: int = 500, key: jax.Array | None = None) -> dict:
    """How often the cross-entropy input gradient at the clean inputs is exactly zero (a
    vanishing or masked gradient gives a gradient attack nothing to follow).

    Returns ``{"examples", "zero_examples"`` (examples whose whole gradient is 0),
    ``"entries", "zero_entries", "nonfinite_examples"}``. A random ``logits_fn`` is
    differentiated on the scoring draw of each example (``key`` as for
    :func:`clean_correct`)."""
    score_data, score_impl = _score_data(logits_fn, key, len(x))
    b = _padded_batch(batch_size, len(x))
    put = _Placer()
    fn = _gradient_fn(logits_fn)
    params = jax.tree.map(lambda a: put(a, replicate=True), params)
    nonzero, finite = [], []
    for s, e in _batches(len(x), b):
        extra = () if score_data is None else (
            jax.random.wrap_key_data(put(_pad(score_data[s:e], b)), impl=score_impl),)
        nz, fin = interruptible(_fetch, fn, (params, put(_pad(np.asarray(x[s:e]), b)),
                                             put(_pad(y[s:e], b)), *extra))
        nonzero.append(nz[: e - s])
        finite.append(fin[: e - s])
    nonzero, finite = np.concatenate(nonzero), np.concatenate(finite)
    per_example = int(np.prod(x.shape[1:]))
    return {"examples": int(len(x)), "zero_examples": int(np.sum(nonzero == 0)),
            "entries": int(len(x) * per_example),
            "zero_entries": int(len(x) * per_example - np.sum(nonzero)),
            "nonfinite_examples": int(np.sum(~finite))}
