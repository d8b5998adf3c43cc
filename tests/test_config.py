"""Config parsing: every mistake is a one-line error naming the key, the value and the fix."""

import tomllib

import pytest

from bench.errors import ConfigError
from bench.sweep.config import load_config, parse_config
from tests.conftest import TINY_TOML


def tiny():
    return tomllib.loads(TINY_TOML)


def test_tiny_config_parses():
    cfg = parse_config(tiny())
    assert [m.label for m in cfg.models] == ["mlp"]
    assert [d.name for d in cfg.defenses] == ["standard", "pgd-at"]
    assert cfg.attacks[1].eps == (0.0, 0.1, 0.2)
    assert cfg.attacks[1].attack.steps == 3
    assert cfg.defenses[1].defense.eps == 0.1
    assert cfg.config_id() == parse_config(tiny()).config_id()


def shipped_configs():
    from pathlib import Path

    return sorted(Path(__file__).parent.parent.glob("bench/configs/*.toml"))


@pytest.mark.parametrize("path", shipped_configs(), ids=lambda p: p.stem)
def test_shipped_configs_parse(path):
    cfg = load_config(path)
    assert cfg.models and cfg.defenses and cfg.attacks


def mutate(fn):
    raw = tiny()
    fn(raw)
    return raw


@pytest.mark.parametrize("change,match", [
    (lambda r: r.update(sede=1), "unknown top-level key 'sede'; allowed: name, seed"),
    (lambda r: r["data"].update(nme="x"), r"\[data\]: has no option 'nme'; options: data_dir, eval_examples"),
    (lambda r: r["attacks"][0].update(stepz=3), r"\[\[attacks\]\] #1: attack 'fgsm' has no option 'stepz'"),
    (lambda r: r["defenses"][1].update(epohcs=3), r"\[\[defenses\]\] #2: defense 'pgd-at' has no option 'epohcs'"),
    (lambda r: r["models"][0].update(widht=3), r"\[\[models\]\] #1: .*has no option 'widht'"),
    (lambda r: r["attacks"][0].update(name="fgms"), r"\[\[attacks\]\] #1: unknown attack 'fgms'; choose one of: .*apgd-ce, .*fgsm, .*pgd"),
    (lambda r: r["defenses"][0].update(name="pgd_at"), "unknown defense 'pgd_at'; choose one of: .*pgd-at, .*standard"),
    (lambda r: r["models"][0].update(name="resnet"), "unknown model 'resnet'; choose one of"),
    (lambda r: r["data"].update(name="cifar11"), r"\[data\]: name = 'cifar11' is unknown; choose one of: digits"),
    (lambda r: r["data"].update(eval_examples=0), r"\[data\]: eval_examples = 0 is impossible; values must be ≥ 1"),
    (lambda r: r["attacks"][1].update(steps="20"), r"\[\[attacks\]\] #2: steps = '20' has the wrong type; expected int"),
    (lambda r: r["attacks"][1].update(steps=0), r"\[\[attacks\]\] #2: attack 'pgd': steps = 0 is impossible; it must be > 0"),
    (lambda r: r["attacks"][1].update(eps="0.1"), r"\[\[attacks\]\] #2: eps\[0\] = '0.1' has the wrong type"),
    (lambda r: r.update(seed=1.5), "seed = 1.5 has the wrong type; expected int"),
    (lambda r: r["defenses"][0].update(lr=-1.0), r"\[\[defenses\]\] #1: defense 'standard': lr = -1.0 is impossible; it must be > 0"),
    (lambda r: r["attacks"][1].update(eps=[-0.1]), r"\[\[attacks\]\] #2: eps = -0.1 is impossible"),
    (lambda r: r["attacks"][1].update(eps=[0.1, 0.1]), "repeats a value"),
    (lambda r: r.update(attacks=[]), r"the grid is empty: add at least one \[\[attacks\]\]"),
    (lambda r: r.pop("models"), r"the grid is empty: add at least one \[\[models\]\]"),
    (lambda r: r["attacks"][1].update(eps=[]), "the grid is empty"),
    (lambda r: r["attacks"][1].pop("eps"), r"\[\[attacks\]\] #2 \(pgd\) has no eps"),
    (lambda r: r["attacks"][1].pop("name"), r"\[\[attacks\]\] #2 has no name"),
    (lambda r: r["defenses"].append({"name": "standard"}), "both labelled 'standard'"),
    (lambda r: r.update(data=3), r"\[data\] must be a table"),
])
def test_config_errors_are_one_line(change, match):
    with pytest.raises(ConfigError, match=match) as e:
        parse_config(mutate(change))
    assert "\n" not in str(e.value)


def test_same_attack_twice_with_labels_or_norms():
    raw = tiny()
    raw["attacks"].append({"name": "pgd", "norm": "l2", "steps": 2, "eps": [0.5]})
    assert len(parse_config(raw).attacks) == 3  # distinct by norm
    raw["attacks"].append({"name": "pgd", "steps": 5, "eps": [0.1]})
    with pytest.raises(ConfigError, match="both labelled 'pgd/linf'"):
        parse_config(raw)
    raw["attacks"][-1]["label"] = "pgd-5"
    assert len(parse_config(raw).attacks) == 4


def test_bad_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_registries_reject_duplicates_and_list_names():
    from bench.sweep.registry import ATTACKS, DEFENSES, MODELS, Registry

    for registry in (ATTACKS, DEFENSES, MODELS):
        name = next(iter(registry))
        with pytest.raises(ValueError, match="registered twice"):
            registry.register(name, object)
    r = Registry("widget")
    r.register("b", int)
    r.register("a", float)
    assert "a" in r and "c" not in r and list(r) == ["b", "a"]
    with pytest.raises(ConfigError, match="unknown widget 'c'; choose one of: a, b"):
        r["c"]
