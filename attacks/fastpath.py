"""The fast path for any model: re-express the primitives whose gradients XLA:CPU runs slowly.

:func:`fast` turns any ``logits_fn`` into one with the same values and the same gradients
(bit for bit where the primitive is replaced exactly; tested) whose input gradient XLA runs
fast on CPU. It traces the function to a jaxpr (kept per argument shape when it captured no
arrays) and re-emits it, replacing two primitives:

* ``conv_general_dilated`` (ungrouped, default precision) by a ``custom_jvp`` convolution whose
  input tangent convolves with a physically transposed kernel behind
  ``lax.optimization_barrier``. Reverse mode transposes that rule, so the input gradient reads
  the kernel in XLA's canonical layout. Otherwise XLA:CPU folds the kernel transpose into
  non-canonical dimension numbers, which inside a ``while`` loop (a rolled attack) it runs on
  a generic convolution ~10× slower (measured: 648 vs 28 ms per step on one 3×3 conv).
* ``reduce_window_max`` (max pooling, no dilation) by a maximum over the window's strided
  slices with a ``custom_jvp`` that passes each output's tangent from the first maximal input
  of its window, as XLA's ``select_and_gather_add`` does. Its transpose is strided pads
  instead of ``select_and_scatter_add``, which XLA:CPU runs ~10× slower.

Everything else is bound as traced, including ``jit``-ed sub-functions (re-emitted inline,
with the same replacements) and user ``custom_jvp``/``custom_vjp`` rules (kept as they are);
convolutions and pools inside a model's own ``scan``/``while``/``cond`` are left alone. Only
on the CPU backend, where it was measured: on GPUs/TPUs :func:`fast` returns the function.

The attack kernels apply :func:`fast` themselves (so ``attacks.PGD()(logits_fn, ...)`` gets it
with any Flax/NNX/Haiku/plain-JAX model); ``logits_fn.fast = False`` opts a model out.
"""

from __future__ import annotations

import collections
import functools
import itertools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jax.extend import core as jcore

# ------------------------------------------------------------------ convolution


def _transposed_kernel_conv(lhs, rhs, strides, padding, lhs_dil, rhs_dil, dn):
    """The same convolution with the kernel's in/out axes physically swapped.

    Its input gradient (the convolution's transpose) then reads the kernel in the canonical
    layout. The optimization barrier stops XLA from folding the swap back into the
    dimension numbers, which inside a ``while`` loop sends XLA:CPU to a generic convolution
    ~10× slower than its fast path (measured: 187 vs 51 ms per step on a 3×3, 32→64 conv).
    """
    o, i, *spatial = dn.rhs_spec
    perm = list(range(rhs.ndim))
    perm[o], perm[i] = perm[i], perm[o]
    rhs_t = jax.lax.optimization_barrier(jnp.transpose(rhs, perm))
    dn_t = jax.lax.ConvDimensionNumbers(dn.lhs_spec, (i, o, *spatial), dn.out_spec)
    return jax.lax.conv_general_dilated(lhs, rhs_t, strides, padding, lhs_dil, rhs_dil, dn_t)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5, 6))
def conv(lhs, rhs, strides, padding, lhs_dil, rhs_dil, dn):
    """``lax.conv_general_dilated`` (ungrouped, default precision) with the fast input gradient.

    All but ``lhs`` and ``rhs`` must be hashable: ``strides``, ``lhs_dil`` and ``rhs_dil``
    tuples, ``padding`` a string or a tuple of (low, high) pairs, ``dn`` the
    ``ConvDimensionNumbers``. The one implementation: :func:`fast` emits it for the
    convolutions of any traced model, and ``models.layers.Conv`` calls it directly.
    """
    return jax.lax.conv_general_dilated(lhs, rhs, strides, padding, lhs_dil, rhs_dil, dn)


def _conv_jvp(strides, padding, lhs_dil, rhs_dil, dn, primals, tangents):
    """The convolution is bilinear: d(conv) = conv(dlhs, rhs) + conv(lhs, drhs).

    The ``dlhs`` term uses the transposed-kernel form, so reverse mode (which transposes this
    rule) computes the input gradient with the canonical kernel layout. A JVP rather than a
    VJP keeps forward mode (``jax.jvp``, ``jax.hessian``) working; symbolic zeros skip the
    weight term when only the input is differentiated (attacks), so no convolution is wasted.
    """
    lhs, rhs = primals
    dlhs, drhs = tangents
    out = conv(lhs, rhs, strides, padding, lhs_dil, rhs_dil, dn)
    terms = []
    if type(dlhs) is not SymbolicZero:
        terms.append(_transposed_kernel_conv(dlhs, rhs, strides, padding, lhs_dil, rhs_dil, dn))
    if type(drhs) is not SymbolicZero:
        terms.append(jax.lax.conv_general_dilated(lhs, drhs, strides, padding, lhs_dil, rhs_dil, dn))
    tangent = sum(terms[1:], terms[0]) if terms else jnp.zeros_like(out)
    return out, tangent


conv.defjvp(_conv_jvp, symbolic_zeros=True)


def _conv_rule(lhs, rhs, *, window_strides, padding, lhs_dilation, rhs_dilation,
               dimension_numbers, feature_group_count, batch_group_count, precision,
               preferred_element_type, out_sharding=None, **other):
    if (feature_group_count != 1 or batch_group_count != 1 or precision is not None
            or preferred_element_type is not None or out_sharding is not None or other):
        return None
    pad = tuple(tuple(p) for p in padding)
    return conv(lhs, rhs, tuple(window_strides), pad, tuple(lhs_dilation), tuple(rhs_dilation),
                 dimension_numbers)


# ------------------------------------------------------------------ max pooling


def _window_slices(x, window, strides, padding):
    """The strided slices of ``x`` (padded with -inf), one per window offset, in row-major
    window order: slice k holds, for every output position, the k-th element of its window."""
    if any(lo or hi for lo, hi in padding):
        x = jax.lax.pad(x, jnp.array(-jnp.inf, x.dtype), [(lo, hi, 0) for lo, hi in padding])
    out_shape = [(n - w) // s + 1 for n, w, s in zip(x.shape, window, strides)]
    slices = []
    for offset in itertools.product(*(range(w) for w in window)):
        limit = [o + (m - 1) * s + 1 for o, m, s in zip(offset, out_shape, strides)]
        slices.append(jax.lax.slice(x, offset, limit, strides))
    return slices


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, padding):
    slices = _window_slices(x, window, strides, padding)
    return functools.reduce(jnp.maximum, slices)


@_max_pool.defjvp
def _max_pool_jvp(window, strides, padding, primals, tangents):
    """Each output's tangent is that of the first maximal element of its window (XLA's
    ``select_and_gather_add`` with ``ge`` keeps the earlier element on ties)."""
    (x,), (dx,) = primals, tangents
    values = _window_slices(x, window, strides, padding)
    # Padding never wins (-inf), so its tangent is irrelevant: pad the tangent with zeros.
    dx_slices = _window_slices_zero(dx, window, strides, padding)
    best, tangent = values[0], dx_slices[0]
    for v, t in zip(values[1:], dx_slices[1:]):
        take = v > best
        best = jnp.where(take, v, best)
        tangent = jnp.where(take, t, tangent)
    return best, tangent


def _window_slices_zero(x, window, strides, padding):
    if any(lo or hi for lo, hi in padding):
        x = jax.lax.pad(x, jnp.zeros((), x.dtype), [(lo, hi, 0) for lo, hi in padding])
    return _window_slices(x, window, strides, [(0, 0)] * x.ndim)


def _reduce_window_max_rule(x, *, window_dimensions, window_strides, padding, base_dilation,
                            window_dilation, **other):
    if other or any(d != 1 for d in (*base_dilation, *window_dilation)) or \
            not jnp.issubdtype(x.dtype, jnp.floating):
        return None
    size = 1
    for w in window_dimensions:
        size *= w
    if size > 64:  # a global or huge pool: the slice form would unroll too far
        return None
    return _max_pool(x, tuple(window_dimensions), tuple(window_strides),
                     tuple(tuple(p) for p in padding))


_RULES: dict[str, Callable[..., Any]] = {
    "conv_general_dilated": _conv_rule,
    "reduce_window_max": _reduce_window_max_rule,
}
_INLINE = ("pjit", "jit", "closed_call", "core_call")


# ------------------------------------------------------------------ the interpreter


def _eval(jaxpr, consts, *args):
    """``jax.core.eval_jaxpr`` with the replacements of :data:`_RULES`; ``jit``-ed
    sub-jaxprs are evaluated inline, recursively."""
    env: dict = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    for v, val in zip(jaxpr.constvars, consts):
        env[v] = val
    for v, val in zip(jaxpr.invars, args):
        env[v] = val
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        out = None
        if name in _RULES:
            out = _RULES[name](*invals, **eqn.params)
            if out is not None and eqn.primitive.multiple_results:
                out = list(out)
        elif name in _INLINE and isinstance(eqn.params.get("jaxpr"), jcore.ClosedJaxpr):
            inner = eqn.params["jaxpr"]
            out = _eval(inner.jaxpr, inner.consts, *invals)
        elif name in _INLINE and "call_jaxpr" in eqn.params and \
                isinstance(eqn.params["call_jaxpr"], jcore.Jaxpr):
            out = _eval(eqn.params["call_jaxpr"], (), *invals)
        if out is None:
            params = eqn.primitive.get_bind_params(eqn.params)
            out = eqn.primitive.bind(*invals, **params)
        if eqn.primitive.multiple_results:
            for v, val in zip(eqn.outvars, out):
                env[v] = val
        else:
            env[eqn.outvars[0]] = out
    return [read(v) for v in jaxpr.outvars]


def fast(logits_fn: Callable) -> Callable:
    """``logits_fn`` with the fast-gradient replacements; same signature, values and
    gradients, and the same ``random`` attribute. Idempotent; ``logits_fn.fast = False``
    returns it unchanged. Memoised per function, so the engine's and kernels'
    compile caches see one wrapper per model (bounded LRU)."""
    if getattr(logits_fn, "fast", True) is False or getattr(logits_fn, "_robustax_fast", False):
        return logits_fn
    if jax.default_backend() != "cpu":  # measured on XLA:CPU only; GPUs/TPUs run the model as is
        return logits_fn
    try:
        _WRAPPERS.move_to_end(logits_fn)
        return _WRAPPERS[logits_fn]
    except (KeyError, TypeError):
        pass
    jaxprs: dict = {}

    @functools.wraps(logits_fn)
    def wrapped(*args):
        leaves, treedef = jax.tree.flatten(args)
        key = (treedef, tuple((jnp.shape(a), str(jax.typeof(a).dtype)) for a in leaves))
        entry = jaxprs.get(key)
        if entry is None:
            closed, out_shape = jax.make_jaxpr(
                lambda *flat: logits_fn(*jax.tree.unflatten(treedef, flat)),
                return_shape=True)(*leaves)
            entry = (closed, jax.tree.structure(out_shape))
            # Only a jaxpr without captured arrays is kept: consts may be weights the function
            # closes over (an NNX model updated in place later) or an outer trace's tracers.
            if not closed.consts:
                jaxprs[key] = entry
                if len(jaxprs) > _CACHE_SIZE:
                    jaxprs.pop(next(iter(jaxprs)))
        closed, out_tree = entry
        return jax.tree.unflatten(out_tree, _eval(closed.jaxpr, closed.consts, *leaves))

    wrapped._robustax_fast = True
    wrapped.__wrapped__ = logits_fn
    if getattr(logits_fn, "random", False):
        wrapped.random = True
    try:
        _WRAPPERS[logits_fn] = wrapped
    except TypeError:  # unhashable: no memo
        return wrapped
    while len(_WRAPPERS) > _CACHE_SIZE:
        _WRAPPERS.popitem(last=False)
    return wrapped


_CACHE_SIZE = 32
_WRAPPERS: collections.OrderedDict = collections.OrderedDict()
"""Wrappers by model function, least recently used first (bounded, like the engine's caches:
a fresh lambda per call must not grow memory without end)."""
