"""The ``robustax`` command: parses arguments and calls library functions.

Any :class:`~bench.errors.RobustaxError` (bad config, unknown name, missing data set,
tampered file) is printed as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading
from pathlib import Path

from bench import xla
from bench.errors import ConfigError, RobustaxError, Terminated, printable
from bench.pytorch.crosscheck import main as crosscheck_main
from bench.pytorch.speed import ISAS
from bench.pytorch.speed import main as speed_main
from bench.pytorch.torch_import import import_torch
from bench.reports.compare import main as compare_main
from bench.reports.leaderboard import terminal as leaderboard_text
from bench.reports.leaderboard import write_leaderboard
from bench.reports.report import checklist_text, summary, write_report
from bench.security import commands as security_cli
from bench.security.commands import apply_run_flags
from bench.store.io import slug
from bench.sweep.config import load_config, read_config_text
from bench.sweep.data import describe_datasets
from bench.sweep.distributed import initialize
from bench.sweep.registry import ATTACKS, DEFENSES, MODELS
from bench.sweep.runner import run_sweep


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (argparse's own print the usage first)."""

    def error(self, message):
        print(f"robustax: error: {printable(message)}; see `{self.prog} --help`",
              file=sys.stderr)
        raise SystemExit(2)


def _gate_flags(p) -> None:
    """The regression gate's options, shared by ``compare`` and ``report --baseline``."""
    p.add_argument("--tolerance", type=float, default=1.0,
                   help="percentage points a cell may move before it can fail (default 1)")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="family-wise error level of the Holm-corrected tests (default 0.05)")
    p.add_argument("--fail-on", choices=("drop", "rise", "any"), default="any",
                   help="which direction fails the gate (default any: a rise can mean a "
                        "weakened attack)")
    p.add_argument("--by", choices=("id", "label"), default="id",
                   help="match cells by identity (labels, seed and every option; default) "
                        "or by (model, defense, attack, norm, ε) labels only")


def _gate(args) -> dict:
    return {"tolerance": args.tolerance, "alpha": args.alpha, "fail_on": args.fail_on,
            "by": args.by}


def _eps(text: str) -> float:
    """--eps as a number or a fraction (``8/255``, as RobustBench writes it)."""
    num, slash, den = text.partition("/")
    try:
        value = float(num) / float(den) if slash else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"invalid ε {text!r}: give a number or a fraction "
                                         f"such as 8/255") from None
    return value


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="robustax", description="JAX adversarial-robustness sweeps.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run (or resume) a sweep config into a run directory")
    run.add_argument("config", help="TOML sweep config, e.g. bench/configs/default.toml")
    run.add_argument("--out", help="run directory (default: runs/<config name>)")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    security_cli.add_run_flags(run)
    run.add_argument("--distributed", action="store_true",
                     help="join a multi-process run (jax.distributed; see bench/sweep/distributed.py)")
    rep = sub.add_parser("report", help="rebuild records.csv, tables and plots of a run directory")
    rep.add_argument("run_dir")
    rep.add_argument("--baseline", help="a baseline run directory: adds the regression "
                                        "verdict (`robustax compare`) to report.md")
    _gate_flags(rep)
    cmp_ = sub.add_parser("compare", help="regression gate: per-cell exact McNemar tests of a "
                                          "new run against a baseline run (exit 1 on a change)")
    cmp_.add_argument("baseline", help="baseline run directory, e.g. results/default")
    cmp_.add_argument("new", help="new run directory")
    _gate_flags(cmp_)
    cmp_.add_argument("--out", help="where compare.{csv,md,json} go (default NEW/compare/)")
    lb = sub.add_parser("leaderboard", help="RobustBench model-info entries (JSON) and a "
                                            "Markdown leaderboard of a run's rows at one ε")
    lb.add_argument("run_dir")
    lb.add_argument("--out", help="where the entries and leaderboard.md go (default "
                                  "RUN_DIR/leaderboard/)")
    lb.add_argument("--eps", type=_eps, help="the budget, e.g. 0.3 or 8/255 (default: the largest "
                                             "ε with an AutoAttack cell)")
    lb.add_argument("--norm", choices=("linf", "l2"),
                    help="default: the norm of the chosen cells (L∞ first)")
    sub.add_parser("list", help="list data sets, models, defenses and attacks with options")
    speed = sub.add_parser("speed", help="time attacks against k × (forward + input gradient), "
                                         "the sweep engine and torchattacks (writes CSV + Markdown)")
    speed.add_argument("--batch", type=int, default=256)
    speed.add_argument("--steps", type=int, default=20)
    speed.add_argument("--repeats", type=int, default=3)
    speed.add_argument("--torchattacks", action="store_true",
                       help="also time torchattacks on PyTorch twins (same weights; needs torch)")
    speed.add_argument("--out", help="directory for speed.csv and speed.md")
    speed.add_argument("--layers", action="store_true",
                       help="also time the cnn's convolutions one by one (XLA, and PyTorch with "
                            "--torchattacks): layers.csv and layers.md")
    speed.add_argument("--models", default="cnn,user-cnn",
                       help="comma-separated: cnn (robustax's), user-cnn (plain flax.linen)")
    speed.add_argument("--isa", choices=ISAS, default="native",
                       help="cap XLA and PyTorch at this instruction set (run in a fresh "
                            "process; default native: no cap)")
    cc = sub.add_parser("crosscheck", help="compare attacks with torchattacks on the same weights "
                                           "(cnn models of a finished run; needs torch)")
    cc.add_argument("run_dir")
    cc.add_argument("--examples", type=int, default=100)
    cc.add_argument("--seed", type=int, default=0)
    cc.add_argument("--attack", action="append", help="only this attack name (repeatable)")
    cc.add_argument("--eps", action="append", type=float, help="only this ε (repeatable)")
    cc.add_argument("--defense", action="append", help="only this defense label (repeatable)")
    imp = sub.add_parser("import-torch", help="convert a PyTorch state_dict of a RobustBench "
                                              "architecture to robustax weights (needs torch)")
    imp.add_argument("arch", help="preact-resnet18, resnet18, wrn-28-10, wrn-34-10, wrn-70-16 "
                                  "(or wrn-<depth>-<widen>)")
    imp.add_argument("state_dict", help="torch.save(model.state_dict()) file or .safetensors")
    imp.add_argument("out", help="output .safetensors file (robustax weights)")
    imp.add_argument("--mean", type=float, nargs="+",
                     help="per-channel mean the model subtracts (if the state dict has no "
                          "mu/mean buffer); default: none")
    imp.add_argument("--std", type=float, nargs="+", help="per-channel std, as --mean")
    imp.add_argument("--activation", default="relu", choices=("relu", "swish"),
                     help="activation of DeepMind WideResNets (DMWideResNet); default relu")
    imp.add_argument("--check-inputs", type=int, default=8,
                     help="random 32x32 inputs on which the logits must agree (default 8)")

    security_cli.add_parsers(sub)
    return p


def _import_torch(args) -> None:
    if args.check_inputs < 1:
        raise RobustaxError(f"--check-inputs {args.check_inputs} is impossible; give at least 1")
    conv = import_torch(args.arch, args.state_dict, args.out, mean=args.mean, std=args.std,
                        activation=args.activation, check_inputs=args.check_inputs)
    m = conv.module
    options = conv.metadata()["model_options"]
    print(f"{args.arch} ({conv.layout} layout, {m.num_classes} classes, mean {list(m.mean)}, "
          f"std {list(m.std)}): logits agree on {args.check_inputs} random inputs (max "
          f"difference {conv.max_diff:.2g}, max |logit| {conv.max_logit:.3g})")
    print(f"wrote {args.out}; use it in a config as:")
    print(f'[[models]]\nname = "{conv.arch.model(conv.layout)}"\n' +
          "".join(f"{k} = {_toml(v)}\n" for k, v in options.items()) +
          f'weights = "{args.out}"')


def _toml(v) -> str:
    import json

    return json.dumps(list(v) if isinstance(v, tuple) else v)


def _run(args) -> None:
    text = read_config_text(args.config)
    cfg = load_config(args.config, text)

    cfg = apply_run_flags(cfg, args)

    out = Path(args.out) if args.out else Path("runs") / slug(cfg.name)
    if out.exists() and not out.is_dir():
        raise RobustaxError(f"--out {str(out)!r} is a file, not a directory; pass a new or "
                            f"existing run directory")
    lead = True
    if getattr(args, "distributed", False):
        lead = initialize()[0] == 0
    records = run_sweep(cfg, out, config_text=text, progress=not args.no_progress)
    if not lead:  # only process 0 writes the run directory and prints
        return
    write_report(out, records)
    print(summary(out, width=_width()))
    print(checklist_text(out))
    print(f"run directory: {printable(out)}  (records.csv, tables/, plots/)")


_FIXES = {
    errno.ENOSPC: "the disk is full; free some space or pass --out on another disk (finished "
                  "cells are kept)",
    errno.EDQUOT: "the disk quota is used up; free some space or pass --out elsewhere",
    errno.EROFS: "the file system is read-only; pass --out on a writable one",
    errno.EACCES: "no permission; pass --out in a directory you can write, or fix its "
                  "permissions",
    errno.EPERM: "not permitted; pass --out in a directory you can write",
    errno.EEXIST: "a file is in the way; remove it or pass another --out",
    errno.ENOTDIR: "a file is in the way where a directory should be; pass another --out",
    errno.EISDIR: "a directory is in the way where a file should be; remove it",
    errno.ENAMETOOLONG: "the path is too long; pass a shorter --out",
}


def _os_error(e: OSError) -> str:
    """One line for a file-system error: the path, what the OS said, and the fix."""
    fix = _FIXES.get(e.errno, "check that path")
    return f"{e.filename}: {e.strerror or e}; {fix}"


def _device_call_running() -> bool:
    return any(t.name == "robustax-device-call" and t.is_alive() for t in threading.enumerate())


def _width() -> int:
    """Columns of the printed summary: the terminal's, at most 100 (100 when not a terminal)."""
    import shutil

    return min(shutil.get_terminal_size((100, 24)).columns, 100)


def _list() -> None:
    for title, rows in (("data sets", describe_datasets()), ("models", MODELS.describe()),
                        ("defenses", DEFENSES.describe()), ("attacks", ATTACKS.describe())):
        print(f"{title}:")
        for name, text in rows:
            print(f"  {name:<20} {text}")


def _speed_models(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in ("cnn", "user-cnn")]
    if bad or not names:
        raise ConfigError(f"--models {text!r}: choose from cnn, user-cnn (comma-separated)")
    return names


def _report(args) -> None:
    if not Path(args.run_dir, "cells").is_dir():
        raise RobustaxError(f"{args.run_dir} is not a run directory (no cells/); pass the "
                            f"--out directory of a `robustax run`")
    paths = write_report(args.run_dir, baseline=args.baseline, gate=_gate(args))
    print(summary(args.run_dir, width=_width()))
    print(checklist_text(args.run_dir))
    for folder in dict.fromkeys(p.parent for p in paths):
        print(f"wrote {sum(p.parent == folder for p in paths)} files to {folder}/")


def _compare(args) -> int:
    return compare_main(args.baseline, args.new, out=args.out, **_gate(args))


def _leaderboard(args) -> None:
    print(leaderboard_text(write_leaderboard(args.run_dir, out=args.out, eps=args.eps,
                                             norm=args.norm)))


def _crosscheck(args) -> None:
    crosscheck_main(args.run_dir, args.examples, args.seed, args.attack, args.eps, args.defense)


def _speed(args) -> None:
    speed_main(batch=args.batch, steps=args.steps, repeats=args.repeats,
               torchattacks=args.torchattacks, out=args.out, models=_speed_models(args.models),
               layers=args.layers, isa=args.isa)


_COMMANDS = {"run": _run, "report": _report, "import-torch": _import_torch,
             "list": lambda args: _list(), "compare": _compare, "crosscheck": _crosscheck,
             "speed": _speed, "leaderboard": _leaderboard}
"""One small function per command; the security commands (``security_cli.COMMANDS``) are
dispatched by :func:`bench.security.commands.main`."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    xla.configure()
    args = _parser().parse_args(argv)
    previous = _on_sigterm()
    try:
        return _COMMANDS.get(args.command, security_cli.main)(args) or 0
    except RobustaxError as e:
        print(f"robustax: error: {printable(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        what, code = ("terminated (SIGTERM)", 143) if isinstance(e, Terminated) else (
            "interrupted", 130)
        print(f"robustax: {what}; finished cells are saved, rerun the same command to resume",
              file=sys.stderr)
        if argv is None or _device_call_running():
            # The process's own entry point (or a compiled call still running on a worker
            # thread): exit now rather than wait for that call or for interpreter teardown
            # (seconds with XLA loaded). Every artifact is already written and fsync'd.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code
    except OSError as e:
        if e.filename is None:  # not about a path: a bug, keep the traceback
            raise
        print(f"robustax: error: {printable(_os_error(e))}", file=sys.stderr)
        return 2
    finally:
        if previous is not _UNCHANGED:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


_UNCHANGED = object()


def _on_sigterm():
    """Makes SIGTERM raise :class:`~bench.errors.Terminated` in the main thread (as SIGINT
    raises KeyboardInterrupt), so a run ends as on Ctrl-C; returns the handler it replaced.
    Left as it is off the main thread (signals cannot be handled there) and when SIGTERM is
    ignored (the launcher meant it so)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) == signal.SIG_IGN):
        return _UNCHANGED

    def terminate(signum, frame):
        raise Terminated()

    return signal.signal(signal.SIGTERM, terminate)
