"""bench.pytorch.gpu_bench's pieces that can go wrong without a GPU: the PyTorch twins of the ResNets
(BatchNorm in eval mode with the Flax statistics) and the result files. The whole script's
``--small`` path takes minutes on CPU (it compiles every attack on four models), so it is not
run here; ``python -m bench.pytorch.gpu_bench --small --out DIR`` is the smoke test."""

import csv

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench.pytorch import gpu_bench, gpu_resnets
from models import CNN, PreActResNet18, WideResNet, make_logits_fn

torch = pytest.importorskip("torch")


def random_variables(module, shape, seed=0):
    """Random weights and BatchNorm statistics for ``module`` without compiling its
    initialiser (``jax.eval_shape`` only traces; a ResNet's jitted init takes ~20 s on CPU)."""
    import flax

    tree = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1,) + shape),
                                              train=False))
    rng = np.random.default_rng(seed)
    out = {}
    for path, leaf in flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)).items():
        name = path[-1]
        if name == "kernel":
            a = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
        elif name in ("var", "scale"):
            a = rng.uniform(0.5, 1.5, leaf.shape)
        else:  # biases, BatchNorm shifts and running means
            a = 0.1 * rng.normal(size=leaf.shape)
        out[path] = jnp.asarray(a, jnp.float32)
    return flax.traverse_util.unflatten_dict(out)


@pytest.mark.parametrize("module", [
    PreActResNet18(num_classes=10, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), width=4),
    WideResNet(num_classes=10, mean=(0.5,), std=(0.25,), depth=10, widen=1),
], ids=["preact18-w4", "wrn-10-1"])
def test_resnet_twin_matches_logits_and_input_gradient(module):
    from bench.pytorch.torch_twin import preact_twin, to_torch

    key = jax.random.key(0)
    variables = random_variables(module, (32, 32, 3))
    x = np.asarray(jax.random.uniform(jax.random.fold_in(key, 2), (4, 32, 32, 3)))
    y = np.arange(4) % 10
    net = preact_twin(module, variables, x)  # raises unless the logits agree to 1e-4
    assert net.check_diff <= 1e-5 * (1 + float(np.abs(net(to_torch(x)).detach().numpy()).max()))
    assert not net.training

    logits_fn = make_logits_fn(module)

    def loss(z):
        return -jnp.sum(jax.nn.log_softmax(logits_fn(variables, z))[jnp.arange(4), y])

    with jax.default_matmul_precision("highest"):
        ours = np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(x))).transpose(0, 3, 1, 2)
    xt = to_torch(x).requires_grad_(True)
    ce = torch.nn.functional.cross_entropy(net(xt), torch.tensor(y), reduction="sum")
    theirs = torch.autograd.grad(ce, xt)[0].numpy()
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-6 * np.abs(ours).max())


def test_cnn_twin_moves_with_its_normalisation():
    from bench.pytorch.torch_twin import cnn_twin

    module = CNN(num_classes=10, mean=(0.13,), std=(0.31,), width=4, dense=8)
    params = random_variables(module, (8, 8, 1))
    x = np.random.default_rng(1).uniform(size=(2, 8, 8, 1)).astype(np.float32)
    net = cnn_twin(module, params, x)
    assert {"_mean", "_std"} <= dict(net.named_buffers()).keys()  # .to(device) moves them


@pytest.mark.parametrize("twin", ["cnn", "user-cnn", "preact"])
def test_a_twin_that_differs_from_the_flax_model_is_refused(twin, monkeypatch):
    """Every twin checks its logits against the Flax model before it is used: off by 1 (or
    NaN) in the reference, it raises naming the model instead of returning a wrong twin."""
    from bench.pytorch import torch_twin
    from bench.pytorch.speed import UserCNN

    x = np.random.default_rng(1).uniform(size=(2, 28, 28, 1)).astype(np.float32)
    if twin == "preact":
        module = PreActResNet18(num_classes=10, width=4, blocks=(1, 1, 1, 1))
        variables = random_variables(module, (28, 28, 1))
        make = lambda: torch_twin.preact_twin(module, variables, x)  # noqa: E731
        name = "PreActResNet18"
    elif twin == "cnn":
        module = CNN(num_classes=10, width=4, dense=8)
        variables = random_variables(module, (28, 28, 1))
        make = lambda: torch_twin.cnn_twin(module, variables, x)  # noqa: E731
        name = "the cnn"
    else:
        variables = UserCNN().init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
        make = lambda: torch_twin.user_cnn_twin(variables, x)  # noqa: E731
        name = "the user CNN"
    assert make().check_diff >= 0
    flax_logits = torch_twin._flax_logits
    for shift in (1.0, np.nan):
        monkeypatch.setattr(torch_twin, "_flax_logits", lambda *a, s=shift: flax_logits(*a) + s)
        with pytest.raises(RuntimeError, match=f"PyTorch copy of {name} differs"):
            make()


def test_randomized_variables_perturb_every_batchnorm_parameter():
    variables = {"params": {"Conv_0": {"kernel": jnp.ones((3, 3, 1, 2))}},
                 "batch_stats": {"BatchNorm_0": {"mean": jnp.zeros(2), "var": jnp.ones(2)}}}
    out = gpu_resnets._randomized(variables, jax.random.key(0))
    np.testing.assert_array_equal(out["params"]["Conv_0"]["kernel"], 1.0)
    assert float(jnp.abs(out["batch_stats"]["BatchNorm_0"]["mean"]).min()) > 0
    assert not np.allclose(out["batch_stats"]["BatchNorm_0"]["var"], 1.0)


def test_results_are_written_after_every_row(tmp_path):
    b = gpu_bench.Bench(tmp_path, budget_s=10)
    b.env["device_name"] = "test device"
    b.add("cnn", "forward", "robustax", model="m", batch=4, seconds=0.5, ratio=1.23456)
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert rows[0]["images_per_s"] == "8.0" and rows[0]["ratio"] == "1.23"
    md = (tmp_path / "results.md").read_text()
    assert "test device" in md and "| cnn | forward | robustax |" in md
    with pytest.raises(SystemExit):
        gpu_bench.main(["--out", str(tmp_path), "--sections", "nope"])


def test_torch_cascade_runs_each_stage_on_the_points_still_robust():
    """The aa-wrn section's torchattacks cascade (issue 22, item 4): stage s only sees the
    points every earlier stage left robust, and the counts say who broke what."""
    net = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1, 1, 0])  # the last one is misclassified clean
    seen = []

    def flip_first(xs, ys):  # breaks the first point it is given
        seen.append(len(xs))
        out = xs.clone()
        out[0] = out[0].flip(0)
        return out

    seconds, counts = gpu_resnets._torch_cascade_s((("a", flip_first), ("b", flip_first)), net,
                                                   x, y, "cpu")
    assert seen == [4, 3] and counts == {-1: 1, 0: 2, 1: 1, 2: 1} and seconds >= 0
