"""The ``robustax`` command: parses arguments and calls library functions.

Any :class:`~bench.errors.RobustaxError` (bad config, unknown name, missing data set,
tampered file) is printed as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import xla
from bench.errors import ConfigError, RobustaxError


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (argparse's own print the usage first)."""

    def error(self, message):
        print(f"robustax: error: {message}; see `{self.prog} --help`", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="robustax", description="JAX adversarial-robustness sweeps.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run (or resume) a sweep config into a run directory")
    run.add_argument("config", help="TOML sweep config, e.g. bench/configs/default.toml")
    run.add_argument("--out", help="run directory (default: runs/<config name>)")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    run.add_argument("--distributed", action="store_true",
                     help="join a multi-process run (jax.distributed; see bench/distributed.py)")
    rep = sub.add_parser("report", help="rebuild records.csv, tables and plots of a run directory")
    rep.add_argument("run_dir")
    sub.add_parser("list", help="list data sets, models, defenses and attacks with options")
    speed = sub.add_parser("speed", help="time attacks against k × (forward + input gradient), "
                                         "the sweep engine and torchattacks (writes CSV + Markdown)")
    speed.add_argument("--batch", type=int, default=256)
    speed.add_argument("--steps", type=int, default=20)
    speed.add_argument("--repeats", type=int, default=3)
    speed.add_argument("--torchattacks", action="store_true",
                       help="also time torchattacks on PyTorch twins (same weights; needs torch)")
    speed.add_argument("--out", help="directory for speed.csv and speed.md")
    speed.add_argument("--models", default="cnn,user-cnn",
                       help="comma-separated: cnn (robustax's), user-cnn (plain flax.linen)")
    cc = sub.add_parser("crosscheck", help="compare attacks with torchattacks on the same weights "
                                           "(cnn models of a finished run; needs torch)")
    cc.add_argument("run_dir")
    cc.add_argument("--examples", type=int, default=100)
    cc.add_argument("--seed", type=int, default=0)
    cc.add_argument("--attack", action="append", help="only this attack name (repeatable)")
    cc.add_argument("--eps", action="append", type=float, help="only this ε (repeatable)")
    cc.add_argument("--defense", action="append", help="only this defense label (repeatable)")
    return p


def _run(args) -> None:
    from bench.config import load_config
    from bench.report import summary, write_report
    from bench.runner import run_sweep

    cfg = load_config(args.config)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    lead = True
    if getattr(args, "distributed", False):
        from bench.distributed import initialize

        lead = initialize()[0] == 0
    records = run_sweep(cfg, out, config_text=Path(args.config).read_text(),
                        progress=not args.no_progress)
    if not lead:  # only process 0 writes the run directory and prints
        return
    write_report(out, records)
    print(summary(out, width=_width()))
    print(f"run directory: {out}  (records.csv, tables/, plots/)")


def _width() -> int:
    """Columns of the printed summary: the terminal's, at most 100 (100 when not a terminal)."""
    import shutil

    return min(shutil.get_terminal_size((100, 24)).columns, 100)


def _list() -> None:
    from bench.data import describe_datasets
    from bench.registry import ATTACKS, DEFENSES, MODELS

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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    xla.configure()
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            _run(args)
        elif args.command == "report":
            from bench.report import summary, write_report

            if not Path(args.run_dir, "cells").is_dir():
                raise RobustaxError(f"{args.run_dir} is not a run directory (no cells/); pass the "
                                    f"--out directory of a `robustax run`")
            paths = write_report(args.run_dir)
            print(summary(args.run_dir, width=_width()))
            for folder in dict.fromkeys(p.parent for p in paths):
                print(f"wrote {sum(p.parent == folder for p in paths)} files to {folder}/")
        elif args.command == "list":
            _list()
        elif args.command == "crosscheck":
            from bench.crosscheck import main as crosscheck_main

            crosscheck_main(args.run_dir, args.examples, args.seed, args.attack, args.eps,
                            args.defense)
        elif args.command == "speed":
            from bench.speed import main as speed_main

            speed_main(batch=args.batch, steps=args.steps, repeats=args.repeats,
                       torchattacks=args.torchattacks, out=args.out,
                       models=_speed_models(args.models))
    except RobustaxError as e:
        print(f"robustax: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robustax: interrupted; finished cells are saved, rerun the same command to "
              "resume", file=sys.stderr)
        return 130
    return 0
