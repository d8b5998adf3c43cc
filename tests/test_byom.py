"""Bring your own model: weights files and Orbax directories in configs, user modules by import
path, .npz data, NNX/linen modules in bench.evaluate, and the PyTorch importer (issue 13)."""

import hashlib
import json
import os
import re
import shlex
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import save_file

import bench
from bench.cli import main
from bench.errors import ConfigError, DataError, RobustaxError
from bench.sweep.config import parse_config
from bench.sweep.data import load_dataset
from bench.sweep.runner import run_sweep
from defenses import checkpoint_bytes
from models import CNN, make_logits_fn

ROOT = Path(__file__).resolve().parent.parent
CNN_OPTS = {"width": 4, "dense": 8}
MEAN, STD = (0.3,), (0.4,)


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def flat_file(variables, path, prefix=True, drop=None):
    flat = traverse_util.flatten_dict(variables, sep="/")
    flat = {(k if prefix else k.split("/", 1)[1]): np.asarray(v) for k, v in flat.items()
            if k != drop}
    save_file(flat, str(path))
    return path


@pytest.fixture(scope="module")
def cnn_variables():
    """A tiny CNN and random variables (drawn in numpy from the shapes: no init compile)."""
    from bench.sweep.weights import shapes

    module = CNN(num_classes=10, mean=MEAN, std=STD, **CNN_OPTS)
    rng = np.random.default_rng(5)
    return module, jax.tree.map(lambda s: rng.normal(0, 0.5, s.shape).astype(np.float32),
                                shapes(module, (8, 8, 1)))


def sweep(models, tmp, attacks=None, data=None, defenses=None, base=None):
    raw = {"name": "byom", "data": data or {"name": "digits", "eval_examples": 40},
           "models": models,
           "attacks": attacks or [{"name": "fgsm", "eps": [0.0, 0.1]}]}
    if defenses:
        raw["defenses"] = defenses
    return run_sweep(parse_config(raw, base_dir=base or tmp), tmp / "run", progress=False)


# --- weights in configs --------------------------------------------------------------------------


def test_three_formats_load_the_same_variables(tmp_path, cnn_variables):
    """A robustax checkpoint, a flat params-only file (BatchNorm-free model) and an Orbax
    directory of the same variables load to the same arrays."""
    import orbax.checkpoint as ocp

    from bench.sweep.weights import load, shapes

    module, variables = cnn_variables
    (tmp_path / "own.safetensors").write_bytes(checkpoint_bytes(variables, {"model": "cnn"}))
    flat_file(variables, tmp_path / "flat.safetensors", prefix=False)
    ck = ocp.StandardCheckpointer()
    ck.save((tmp_path / "orbax").resolve(), variables)
    ck.wait_until_finished()
    like = shapes(module, (8, 8, 1))
    want = traverse_util.flatten_dict(variables, sep="/")
    for name in ("own.safetensors", "flat.safetensors", "orbax"):
        got = traverse_util.flatten_dict(load(tmp_path / name, like, "'cnn'"), sep="/")
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], np.asarray(want[k]), err_msg=f"{name} {k}")


def test_config_weights_evaluated_as_they_are(tmp_path, cnn_variables, digits):
    """A [[models]] entry with weights (an Orbax directory here) is evaluated without training
    (no [[defenses]]): clean correctness equals argmax(logits) == y computed directly, and the
    records carry the digest and the normalisation."""
    import orbax.checkpoint as ocp

    from bench.sweep.weights import digest

    module, variables = cnn_variables
    ck = ocp.StandardCheckpointer()
    ck.save((tmp_path / "orbax").resolve(), variables)
    ck.wait_until_finished()
    entry = {"name": "cnn", **CNN_OPTS, "mean": list(MEAN), "std": list(STD), "label": "mine"}
    records = sweep([{**entry, "weights": "orbax"}], tmp_path,
                    defenses=[{"name": "squeeze", "base": "pretrained", "bits": 1}])
    assert list(records["defense"].unique()) == ["pretrained", "squeeze", "squeeze (adaptive)"]
    x, y = digits.x_test[:40], digits.y_test[:40]
    for defense, z in (("pretrained", x), ("squeeze", np.round(x))):  # 1 bit: round to 0/1
        cid = records[(records["defense"] == defense) & (records["attack"] == "clean")]["cell_id"]
        mask = np.load(tmp_path / "run" / "masks" / f"{cid.iloc[0]}.npy")
        logits = np.asarray(make_logits_fn(module)(variables, z))
        np.testing.assert_array_equal(mask, logits.argmax(1) == y, err_msg=defense)
    assert set(records["checkpoint"]) == {digest(tmp_path / "orbax")[:12]}
    records = records[records["defense"] == "pretrained"]
    row = records.iloc[0]
    opts = json.loads(row["model_options"])
    assert opts["weights_sha256"] == digest(tmp_path / "orbax") and opts["weights"] == "orbax"
    assert row["checkpoint"] == opts["weights_sha256"][:12]
    assert opts["mean"] == list(MEAN) and opts["std"] == list(STD)
    assert not list((tmp_path / "run").glob("checkpoints/*"))


def test_changed_weights_new_cells_same_weights_reused(tmp_path, cnn_variables):
    module, variables = cnn_variables
    path = tmp_path / "w.safetensors"
    path.write_bytes(checkpoint_bytes(variables))
    entry = [{"name": "cnn", **CNN_OPTS, "weights": "w.safetensors", "mean": [0.3], "std": [0.4]}]
    first = sweep(entry, tmp_path)
    again = sweep(entry, tmp_path)
    assert list(first["cell_id"]) == list(again["cell_id"])
    assert list(first["seconds"]) == list(again["seconds"])  # read back, not recomputed
    other = jax.tree.map(lambda a: -a, variables)
    path.write_bytes(checkpoint_bytes(other))
    changed = sweep(entry, tmp_path)
    assert not set(changed["cell_id"]) & set(first["cell_id"])
    assert changed["checkpoint"].iloc[0] == sha(path)[:12] != first["checkpoint"].iloc[0]


@pytest.mark.parametrize("case,match", [
    ("missing", "has no leaf 'params/Dense_1/bias', which model 'cnn' needs"),
    ("extra", "has leaf 'params/Extra/kernel', which model 'cnn' does not have"),
    ("shape", "leaf 'params/Conv_0/bias' has shape (4,) but model 'cnn' needs (8,); set the "
              "model's options"),
    ("no-norm", "do not say how inputs are normalised; state mean = [...] and std = [...]"),
    ("wrong-model", "were saved for model 'mlp', not 'cnn'; set name = \"mlp\""),
    ("absent", "does not exist; give the path of a .safetensors file"),
])
def test_weights_errors_one_line(tmp_path, cnn_variables, case, match):
    _, variables = cnn_variables
    p = tmp_path / "w.safetensors"
    entry = {"name": "cnn", **CNN_OPTS, "weights": "w.safetensors", "mean": [0.3], "std": [0.4]}
    if case == "missing":
        flat_file(variables, p, drop="params/Dense_1/bias")
    elif case == "extra":
        flat = traverse_util.flatten_dict(variables, sep="/")
        flat["params/Extra/kernel"] = np.zeros(2, np.float32)
        save_file({k: np.asarray(v) for k, v in flat.items()}, str(p))
    elif case == "shape":
        flat_file(variables, p)
        entry["width"] = 8
    elif case == "no-norm":
        flat_file(variables, p)
        del entry["mean"], entry["std"]
    elif case == "wrong-model":
        p.write_bytes(checkpoint_bytes(variables, {"model": "mlp"}))
    with pytest.raises(ConfigError) as e:
        sweep([entry], tmp_path)
    assert match in str(e.value) and "\n" not in str(e.value)


def test_weights_error_through_cli_exit_2(tmp_path, cnn_variables, capsys):
    _, variables = cnn_variables
    flat_file(variables, tmp_path / "w.safetensors", drop="params/Conv_1/kernel")
    (tmp_path / "c.toml").write_text(
        'name = "x"\n[data]\nname = "digits"\neval_examples = 10\n[[models]]\nname = "cnn"\n'
        'width = 4\ndense = 8\nweights = "w.safetensors"\nmean = [0.3]\nstd = [0.4]\n'
        '[[attacks]]\nname = "fgsm"\neps = [0.1]\n')
    assert main(["run", str(tmp_path / "c.toml"), "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no leaf 'params/Conv_1/kernel'" in err


def test_mean_std_only_with_weights(tmp_path):
    with pytest.raises(ConfigError, match="are set from the training data"):
        parse_config({"models": [{"name": "cnn", "mean": [0.5]}],
                      "defenses": [{"name": "standard"}],
                      "attacks": [{"name": "fgsm", "eps": [0.1]}]})


# --- user modules by import path -----------------------------------------------------------------

NO_TRAIN = '''

class NoTrain(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(x.reshape(x.shape[0], -1))
'''


def test_user_module_by_import_path(tmp_path, monkeypatch):
    """The README's my_nets.py and its [[models]] table (module = "my_nets:TinyNet"): trained
    by the grid's defense, then evaluated; import errors are one line."""
    import tomllib

    blocks = readme_blocks()
    (tmp_path / "my_nets.py").write_text(blocks[3][1] + NO_TRAIN)
    entry = tomllib.loads(blocks[4][1])["models"][0]
    assert entry["module"] == "my_nets:TinyNet"
    monkeypatch.delitem(__import__("sys").modules, "my_nets", raising=False)
    records = sweep([entry], tmp_path, defenses=[{"name": "standard", "epochs": 1}],
                    data={"name": "digits", "eval_examples": 40, "train_examples": 200})
    clean = records[records["attack"] == "clean"].iloc[0]
    assert clean["model"] == entry["label"] and clean["defense"] == "standard"
    assert json.loads(clean["model_options"]) == {"module": "my_nets:TinyNet",
                                                  "hidden": entry["hidden"]}
    (ckpt,) = (tmp_path / "run" / "checkpoints").iterdir()  # trained here, then evaluated
    assert clean["checkpoint"] in ckpt.name
    for bad, match in [
        ({"module": "my_nets:NoTrain"}, "its __call__ has no train argument"),
        ({"module": "my_nets:Missing"}, "is not a flax.linen Module class"),
        ({"module": "no_such_pkg.x:Net"}, "cannot be imported"),
        ({"module": "my_nets.TinyNet"}, "is not an import path"),
        ({"module": "my_nets:TinyNet", "hiden": 3}, "has no option 'hiden'"),
    ]:
        with pytest.raises(ConfigError, match=match):
            parse_config({"models": [bad], "defenses": [{"name": "standard"}],
                          "attacks": [{"name": "fgsm", "eps": [0.1]}]}, base_dir=tmp_path)


# --- .npz data -----------------------------------------------------------------------------------


def test_npz_data_loads_and_checks(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 6, 6, 3), dtype=np.uint8)
    y = np.arange(12) % 4
    np.savez(tmp_path / "d.npz", x_test=x, y_test=y, x_train=x, y_train=y)
    ds = load_dataset("npz:d.npz", base_dir=tmp_path)
    assert ds.x_test.dtype == np.float32 and np.allclose(ds.x_test * 255, x)
    assert ds.num_classes == 4 and ds.y_test.dtype == np.int32 and ds.image_shape == (6, 6, 3)
    np.savez(tmp_path / "t.npz", x_test=x, y_test=y)  # evaluation only
    assert len(load_dataset(f"npz:{tmp_path / 't.npz'}").x_train) == 0
    bad = {
        "no-y": ({"x_test": x}, "has no 'y_test' array"),
        "nchw": ({"x_test": x.transpose(0, 3, 1, 2), "y_test": y}, "looks like NCHW"),
        "f64": ({"x_test": x / 255.0, "y_test": y}, "has dtype float64"),
        "range": ({"x_test": x.astype(np.float32), "y_test": y}, "must lie in [0, 1]"),
        "labels": ({"x_test": x, "y_test": y.astype(np.float32)}, "integer class labels"),
        "negative": ({"x_test": x, "y_test": y - 1}, "labels must lie in [0, 3)"),
        "count": ({"x_test": x, "y_test": y[:5]}, "need as many labels as images"),
        "half-train": ({"x_test": x, "y_test": y, "x_train": x}, "only one of x_train"),
        "extra": ({"x_test": x, "y_test": y, "meta": y}, "has an array 'meta'"),
    }
    for name, (arrays, match) in bad.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        with pytest.raises(DataError, match=re.escape(match)):
            load_dataset(f"npz:{name}.npz", base_dir=tmp_path)
    np.savez(tmp_path / "obj.npz", x_test=np.array([object()], dtype=object), y_test=y)
    with pytest.raises(DataError, match="without pickled objects"):
        load_dataset("npz:obj.npz", base_dir=tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("npz:nope.npz", base_dir=tmp_path)


def test_npz_without_train_split_cannot_train(tmp_path):
    x = np.random.default_rng(0).uniform(0, 1, (10, 8, 8, 1)).astype(np.float32)
    np.savez(tmp_path / "t.npz", x_test=x, y_test=np.arange(10))
    with pytest.raises(ConfigError, match="has no training split"):
        sweep([{"name": "mlp", "width": 4, "depth": 1}], tmp_path,
              defenses=[{"name": "standard", "epochs": 1}], data={"name": "npz:t.npz"})


# --- Python API: NNX and linen modules -----------------------------------------------------------


def test_evaluate_nnx_module_equals_its_logits_fn():
    """An NNX module with BatchNorm (non-trivial running statistics) through bench.evaluate
    gives the records of the same function written as logits_fn(state, x) in eval mode; the
    caller's module stays in training mode."""
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.fc1 = nnx.Linear(36, 8, rngs=rngs)
            self.bn = nnx.BatchNorm(8, rngs=rngs)
            self.fc2 = nnx.Linear(8, 3, rngs=rngs)

        def __call__(self, x):
            return self.fc2(nnx.relu(self.bn(self.fc1(x.reshape(x.shape[0], -1)))))

    model = Net(nnx.Rngs(0))
    model.bn.mean.value = jax.random.normal(jax.random.key(1), (8,))
    model.bn.var.value = jax.random.uniform(jax.random.key(2), (8,), minval=0.2, maxval=3.0)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (24, 6, 6, 1)).astype(np.float32)
    y = rng.integers(0, 3, 24)
    attacks = [{"name": "fgsm"}]
    got = bench.evaluate(model, (x, y), attacks, eps=[0.0, 0.3])
    assert model.bn.use_running_average is False  # the caller's module is untouched

    ref = Net(nnx.Rngs(0))
    nnx.update(ref, nnx.state(model))
    ref.eval()
    graphdef, state = nnx.split(ref)
    expected = bench.evaluate(lambda s, z: nnx.merge(graphdef, s)(z), state, (x, y), attacks,
                              eps=[0.0, 0.3])
    assert got["correct"].tolist() == expected["correct"].tolist()
    by_hand = int((np.asarray(ref(x)).argmax(1) == y).sum())
    assert got["correct"].iloc[0] == by_hand and got["correct"].iloc[2] < by_hand
    # Training-mode BatchNorm (batch statistics) would give other logits: the test can tell.
    assert not np.allclose(np.asarray(model(x)), np.asarray(ref(x)), atol=1e-3)
    with pytest.raises(ConfigError, match="carries its own parameters"):
        bench.evaluate(model, state, (x, y), attacks, eps=[0.1])


def test_evaluate_linen_module_with_variables(cnn_variables, digits):
    module, variables = cnn_variables
    data = (digits.x_test[:30], digits.y_test[:30])
    attacks = [{"name": "fgsm"}]
    got = bench.evaluate(module, variables, data, attacks, eps=[0.0, 0.2])
    by_hand = np.asarray(module.apply(variables, data[0], train=False)).argmax(1) == data[1]
    assert got["correct"].tolist()[:2] == [by_hand.sum()] * 2  # clean, and FGSM at ε = 0
    assert got["correct"].iloc[2] <= by_hand.sum() and by_hand.sum() > 0
    from bench.sweep.api import (
        _module_logits,  # the function evaluate attacks: exactly the module's
    )

    fn, params, _, _ = _module_logits(module, variables, data, attacks)
    np.testing.assert_array_equal(np.asarray(fn(params, data[0])),
                                  np.asarray(module.apply(variables, data[0], train=False)))
    with pytest.raises(ConfigError, match="needs its variables"):
        bench.evaluate(module, data=data, attacks=attacks, eps=[0.1])


# --- PyTorch import ------------------------------------------------------------------------------


def randomised(net, seed=0):
    """Random BatchNorm affine parameters and running statistics, so they matter."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 2 + 0.2)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)
    return net.eval()


def state(net):
    return {k: v.numpy().copy() for k, v in net.state_dict().items()}


TWINS = {  # arch, options for narrow test sizes, twin class, twin options, activation
    "preact": ("preact-resnet18", {"width": 4, "blocks": (1, 1, 1, 1)}, "PreActResNet",
               {"width": 4, "blocks": (1, 1, 1, 1)}, "relu"),
    "resnet": ("resnet18", {"width": 4, "blocks": (1, 1, 1, 1)}, "ResNet",
               {"width": 4, "blocks": (1, 1, 1, 1)}, "relu"),
    "wrn": ("wrn-10-2", {}, "WideResNet", {"depth": 10, "widen": 2}, "relu"),
    "dm-swish": ("wrn-10-1", {}, "DMWideResNet", {"depth": 10, "widen": 1, "activation": "swish"},
                 "swish"),
}


@pytest.mark.parametrize("kind", list(TWINS))
def test_import_torch_twin_logits_agree(kind):
    pytest.importorskip("torch")
    import torch

    from bench.pytorch import torch_models as tm
    from bench.pytorch.torch_import import convert, parse_arch

    arch, opts, cls, twin_opts, act = TWINS[kind]
    torch.manual_seed(0)
    net = randomised(getattr(tm, cls)(num_classes=7, **twin_opts))
    sd = state(net)
    sd["mu"] = np.array([0.49, 0.48, 0.45], np.float32).reshape(1, 3, 1, 1)
    sd["sigma"] = np.array([0.25, 0.24, 0.26], np.float32).reshape(1, 3, 1, 1)
    conv = convert(parse_arch(arch, **opts), sd, activation=act, check_inputs=4)
    assert conv.module.num_classes == 7 and conv.module.mean == (0.49, 0.48, 0.45)
    assert conv.max_diff <= 1e-5
    # Independent of the importer's own check: other inputs, compared here; and the running
    # statistics matter (default statistics give other logits).
    x = np.random.default_rng(1).uniform(0, 1, (3, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        net.normalise = lambda z: (z - torch.tensor(sd["mu"])) / torch.tensor(sd["sigma"])
        theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    with jax.default_matmul_precision("highest"):
        ours = np.asarray(make_logits_fn(conv.module)(conv.variables, x))
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    flat = traverse_util.flatten_dict(conv.variables, sep="/")
    plain = {k: (np.zeros_like(v) if k.endswith("/mean") else np.ones_like(v))
             if k.startswith("batch_stats") else v for k, v in flat.items()}
    with jax.default_matmul_precision("highest"):
        default_stats = np.asarray(make_logits_fn(conv.module)(
            traverse_util.unflatten_dict(plain, sep="/"), x))
    assert np.abs(default_stats - ours).max() > 100 * 1e-5


@pytest.fixture(scope="module")
def wrn_file(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from bench.pytorch import torch_models as tm

    tmp = tmp_path_factory.mktemp("wrn")
    net = randomised(tm.WideResNet(depth=10, widen=1))
    torch.save(net.state_dict(), tmp / "wrn.pt")
    return tmp / "wrn.pt", net


def test_import_torch_refuses_other_logits(monkeypatch):
    """The verification gate: a conversion that computes other logits (here one BatchNorm's
    running mean and variance swapped, as a mapping bug would) is refused."""
    pytest.importorskip("torch")
    from bench.pytorch import torch_import as ti
    from bench.pytorch import torch_models as tm

    mapped = ti._flax_variables

    def buggy(*args):
        v = mapped(*args)
        bs = v["batch_stats"]["PreActBlock_0"]["BatchNorm_1"]
        bs["mean"], bs["var"] = bs["var"], bs["mean"]
        return v

    monkeypatch.setattr(ti, "_flax_variables", buggy)
    net = randomised(tm.WideResNet(depth=10, widen=1))
    with pytest.raises(RobustaxError, match="computes other logits than the PyTorch model"):
        ti.convert(ti.parse_arch("wrn-10-1"), state(net), check_inputs=2)


@pytest.mark.parametrize("argv,match", [
    (["wrn-28"], "unknown architecture 'wrn-28'; choose one of: preact-resnet18, resnet18, "
                 "wrn-28-10, wrn-34-10, wrn-70-16"),
    (["wrn-16-1"], "has no 'block1.layer.1.bn1.weight', which wrn-16-1 needs"),
    (["wrn-10-2"], "has no 'block1.layer.0.convShortcut.weight', which wrn-10-2 needs"),
    (["resnet18"], "has no linear.weight or conv1.weight, which resnet18 has"),
    (["preact-resnet18"], "has no linear.weight or conv1.weight, which preact-resnet18 has"),
])
def test_import_torch_errors_exit_2(tmp_path, wrn_file, capsys, argv, match):
    pt, _ = wrn_file
    code = main(["import-torch", *argv, str(pt), str(tmp_path / "o.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert not (tmp_path / "o.safetensors").exists()
    assert match in err, err


def test_import_torch_shape_mismatch_names_key():
    pytest.importorskip("torch")
    from bench.pytorch import torch_models as tm
    from bench.pytorch.torch_import import convert, parse_arch

    with pytest.raises(RobustaxError) as e:
        convert(parse_arch("wrn-10-3"), state(tm.WideResNet(depth=10, widen=2)))
    assert str(e.value) == ("the state dict: 'block1.layer.0.conv1.weight' has shape (32, 16, 3, "
                            "3), wrn-10-3 needs (48, 16, 3, 3); check the architecture name "
                            "(depth/width)")
    # RobustBench's DMWideResNet keeps mean/std out of its state dict: they must be given.
    with pytest.raises(RobustaxError, match=r"is a DeepMind WideResNet, which normalises inside .*"
                                            r"CIFAR-10: --mean 0.4914 0.4822 0.4465"):
        convert(parse_arch("wrn-10-1"), state(tm.DMWideResNet(depth=10, widen=1)))


def test_import_torch_unsafe_pickle_and_conflicting_normalisation(tmp_path, wrn_file, capsys):
    torch = pytest.importorskip("torch")
    pt, net = wrn_file

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"state_dict": net.state_dict(), "x": Evil()}, tmp_path / "evil.pt")
    assert main(["import-torch", "wrn-10-1", str(tmp_path / "evil.pt"),
                 str(tmp_path / "o.safetensors")]) == 2
    assert "weights_only=True" in capsys.readouterr().err
    sd = dict(net.state_dict(), mu=torch.zeros(1, 3, 1, 1), sigma=torch.ones(1, 3, 1, 1))
    torch.save(sd, tmp_path / "n.pt")
    assert main(["import-torch", "wrn-10-1", str(tmp_path / "n.pt"), str(tmp_path / "o.safetensors"),
                 "--mean", "0.5"]) == 2
    assert "drop --mean/--std to use the stored ones" in capsys.readouterr().err


# --- the README section's examples, run as they are written --------------------------------------


def readme_blocks():
    """Code blocks of README.md's section "Evaluate a model you already have"."""
    text = (ROOT / "README.md").read_text()
    start = text.find("## Evaluate a model you already have")
    assert start >= 0, "README.md lost its section 'Evaluate a model you already have'"
    section = text[start:]
    nxt = re.search(r"\n## (?!#)", section[3:])
    section = section[:nxt.start() + 3] if nxt else section
    return re.findall(r"```(\w+)\n(.*?)```", section, re.S)


def run_shell(block, subs=()):
    """Runs the ``robustax ...`` lines of a shell block through the CLI's main (``pip`` lines
    are installation, skipped); ``subs`` shrink the example (e.g. wrn-28-10 -> wrn-10-1)."""
    for line in block.strip().splitlines():
        for old, new in subs:
            line = line.replace(old, new)
        argv = shlex.split(line)
        if argv[0] == "pip":
            continue
        assert argv[0] == "robustax", line
        assert main(argv[1:] + (["--no-progress"] if argv[1] == "run" else [])) == 0, line


def test_readme_route_1_config_weights(tmp_path, monkeypatch):
    code = [body for _, body in readme_blocks()]
    monkeypatch.chdir(tmp_path)
    exec(compile(code[0], "readme-1", "exec"), {})
    Path("my_cnn.toml").write_text(code[1])
    run_shell(code[2])
    records = __import__("pandas").read_csv("runs/my-cnn/records.csv")
    assert set(records["defense"]) == {"pretrained"} and len(records) == 3
    assert records["checkpoint"].iloc[0] == sha("my_cnn.safetensors")[:12]
    assert json.loads(records["model_options"].iloc[0])["mean"] == [0.5]


def test_readme_route_2_nnx(capsys):
    code = [body for _, body in readme_blocks()]
    exec(compile(code[5], "readme-2", "exec"), {})
    out = capsys.readouterr().out
    assert "robust_acc" in out and "pgd" in out


def test_readme_route_3_torch(tmp_path, monkeypatch, capsys):
    """The README's import-torch command and config, shrunk to a WRN-10-1 twin with random
    weights (wrn-28-10 -> wrn-10-1, depth/widen in the config likewise) and a random .npz."""
    torch = pytest.importorskip("torch")
    from bench.pytorch import torch_models as tm
    from defenses import variables_from_bytes

    code = [body for _, body in readme_blocks()]
    monkeypatch.chdir(tmp_path)
    torch.save(randomised(tm.WideResNet(depth=10, widen=1)).state_dict(), "Carmon2019Unlabeled.pt")
    run_shell(code[6], subs=[("wrn-28-10", "wrn-10-1")])
    printed = capsys.readouterr().out
    assert 'name = "wide-resnet"' in printed and "logits agree on 8 random inputs" in printed
    _, meta = variables_from_bytes(Path("carmon2019.safetensors").read_bytes())
    assert meta["model"] == "wide-resnet" and meta["mean"] == [0.0] and meta["std"] == [1.0]
    assert meta["model_options"] == {"depth": 10, "widen": 1}
    assert meta["converted_from"]["sha256"] == sha("Carmon2019Unlabeled.pt")
    assert meta["converted_from"]["max_logit_diff"] <= 1e-4
    rng = np.random.default_rng(0)
    np.savez("cifar10_test.npz", x_test=rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
             y_test=rng.integers(0, 10, 8))
    cfg = code[7].replace("depth = 28", "depth = 10").replace("widen = 10", "widen = 1")
    Path("carmon.toml").write_text('name = "carmon"\n' + cfg +
                                   '[[attacks]]\nname = "fgsm"\neps = [0.0, 0.03]\n')
    assert main(["run", "carmon.toml", "--no-progress"]) == 0
    out = __import__("pandas").read_csv("runs/carmon/records.csv")
    assert list(out["model"].unique()) == ["Carmon2019"] and len(out) == 3


def test_readme_section_blocks():
    assert [lang for lang, _ in readme_blocks()] == \
        ["python", "toml", "sh", "python", "toml", "python", "sh", "toml"]


def test_plan_mixes_trained_and_pretrained_models(tmp_path, cnn_variables):
    """A grid with a model trained here and one with weights: training defenses and wrappers
    apply to the first only; the second has one 'pretrained' row keyed by the file's digest."""
    from bench.sweep.plan import make_plan

    _, variables = cnn_variables
    (tmp_path / "w.safetensors").write_bytes(checkpoint_bytes(variables))
    raw = {"models": [{"name": "mlp", "width": 4},
                      {"name": "cnn", **CNN_OPTS, "label": "theirs", "weights": "w.safetensors",
                       "mean": [0.3], "std": [0.4]}],
           "defenses": [{"name": "standard"}, {"name": "pgd-at"},
                        {"name": "squeeze", "base": "standard"},
                        {"name": "squeeze", "label": "sq-theirs", "base": "pretrained"}],
           "attacks": [{"name": "fgsm", "eps": [0.1]}]}
    plan = make_plan(parse_config(raw, base_dir=tmp_path), "data")
    rows = [(u.model.label, u.defense_label) for u in plan.units]
    assert rows == [("mlp", "standard"), ("mlp", "pgd-at"), ("mlp", "squeeze"),
                    ("mlp", "squeeze (adaptive)"), ("theirs", "pretrained"),
                    ("theirs", "sq-theirs"), ("theirs", "sq-theirs (adaptive)")]
    digest = sha(tmp_path / "w.safetensors")[:12]
    assert [t.digest for t in plan.trainings if t.model.label == "theirs"] == [digest]
    assert {u.checkpoint for u in plan.units if u.model.label == "theirs"} == {digest}
    assert len(plan.trainings) == 3  # mlp × (standard, pgd-at), theirs: nothing else trains
    raw["defenses"].append({"name": "standard", "label": "pretrained"})
    with pytest.raises(ConfigError, match="is labelled 'pretrained', the row of models"):
        parse_config(raw, base_dir=tmp_path)
