"""Leaderboard entries: a run's rows in RobustBench's model-info format (``robustax leaderboard``).

RobustBench publishes each model as one JSON file, ``model_info/<data set>/<Linf|L2>/<id>.json``,
with the fields of its ``ModelInfo`` (``robustbench/utils.py``): ``link``, ``name``, ``authors``,
``additional_data``, ``number_forward_passes``, ``dataset``, ``venue``, ``architecture``,
``eps`` (a string: ``"8/255"``, ``"0.5"``), ``clean_acc``, ``reported`` and ``autoattack_acc``
(percentages as strings, two decimals), ``footnote``; entries whose robust accuracy comes from
another evaluation than AutoAttack carry it in ``external``. Here every model × defense row of a
run at one norm and ε becomes such an entry, from the strongest evaluation the run holds for it:

- its AutoAttack cell at that ε (``autoattack_acc``; the lowest, if it has several), else
- the per-example worst case over every attack run there (the tables' worst-case row; one
  attack: its cell), given as ``external`` with ``autoattack_acc`` null: it is not AutoAttack.

What robustax knows is filled in (data set, architecture as the model label and options, ε,
clean and robust accuracy, forward passes per prediction, whether the weights were trained
here, i.e. on the data set's own training split: ``additional_data`` false); what it cannot know
(``link``, ``name``, ``authors``, ``venue``, ``reported``) is null, and listed in each entry's
``robustax.unfilled``. The ``robustax`` key holds the provenance: run and row, the cells (ids,
examples, counts, 95% interval), config id, code version, the ledger head and who wrote it.

Cells are read through :class:`~bench.store.records.RunDir` (each checked against the manifest
and the ledger) via :func:`bench.reports.report.report_records`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from bench.errors import RobustaxError, printable
from bench.reports.checklist import attack_names
from bench.reports.report import report_records, table_order
from bench.reports.tables import NORM_TEXT, WORST
from bench.store.io import atomic_write_bytes, slug
from bench.store.ledger_view import read_head
from bench.store.provenance import code_version
from bench.store.records import CLEAN, RunDir, run_lock

THREAT_MODELS = {"linf": "Linf", "l2": "L2"}
"""robustax's norms and RobustBench's threat-model names (its folder names)."""

FIELDS = ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset",
          "venue", "architecture", "eps", "clean_acc", "reported", "autoattack_acc", "footnote")
"""RobustBench's model-info fields for L∞ and L2, in its order (corruption fields left out)."""

EXTERNAL = "external"
"""RobustBench's field for a robust accuracy from another evaluation than AutoAttack."""

UNFILLED = ("link", "name", "authors", "venue", "reported")
"""Fields robustax cannot know (the paper's): null in every entry, for the authors to fill."""

AUTOATTACK, WORST_CASE = "autoattack", "worst-case"
"""The two evaluations an entry can come from (``robustax.evaluation``)."""

PRETRAINED = "pretrained"
"""The defense row (and wrapper base) of models that load their weights (bench.sweep.config)."""

FOLDER = "leaderboard"
"""The default --out, inside the run directory."""

_ADAPTIVE = " (adaptive)"
"""How the adaptive row of an inference wrapper is labelled (bench.sweep.config.defense_label)."""

_RESERVED = ("cells", "masks", "info", "gradients", "checkpoints", "tables", "plots", "compare")


@dataclasses.dataclass(frozen=True)
class Pick:
    """The strongest evaluation of one row at the chosen budget."""

    data: str
    model: str
    defense: str
    evaluation: str  # AUTOATTACK or WORST_CASE
    result: pd.Series  # its record: an AutoAttack cell, a worst-case row or a single attack cell
    cells: pd.DataFrame  # the attack cells it rests on
    clean: pd.Series | None  # the row's clean cell


@dataclasses.dataclass
class Board:
    """A written leaderboard: entries (file → JSON object, best first) and leaderboard.md."""

    run: str
    norm: str
    eps: float
    folder: Path
    entries: dict[Path, dict]
    markdown: str
    missing: list[str]

    @property
    def paths(self) -> list[Path]:
        return [self.folder / "leaderboard.md", *self.entries]


# --- choosing the budget and the evaluations ---------------------------------------------------

def _attacked(records: pd.DataFrame) -> pd.DataFrame:
    """Attack cells (no clean or derived worst-case rows) at ε > 0."""
    return records[(records["attack"] != CLEAN) & (records["attack"] != WORST)
                   & (records["eps"] > 0)]


def _is_autoattack(frame: pd.DataFrame, names: dict[str, str]) -> pd.Series:
    return frame["attack"].map(lambda a: names.get(a) == AUTOATTACK).astype(bool)


def _budgets(frame: pd.DataFrame) -> str:
    """The (norm, ε) budgets of ``frame`` as text: ``linf ε 0.1, 0.2; l2 ε 1``."""
    parts = [f"{n} ε {', '.join(f'{e:g}' for e in sorted(g['eps'].unique()))}"
             for n, g in frame.groupby("norm", sort=False)]
    return "; ".join(parts) or "none"


def choose_budget(records: pd.DataFrame, names: dict[str, str], where: str,
                  eps: float | None = None, norm: str | None = None) -> tuple[str, float]:
    """The (norm, ε) of the leaderboard. Without ``eps``: the largest ε with an AutoAttack
    cell (at ``norm``, else L∞ first, then L2); none is a one-line error. With ``eps``: that ε
    as stored, at ``norm`` or the one norm that has attack cells there."""
    if norm is not None and norm not in THREAT_MODELS:
        raise RobustaxError(f"--norm {norm!r}: RobustBench's threat models are "
                            f"{', '.join(THREAT_MODELS)}")
    attacked = _attacked(records)
    attacked = attacked[attacked["norm"].isin(list(THREAT_MODELS))]
    if eps is None:
        aa = attacked[_is_autoattack(attacked, names)]
        for n in [norm] if norm else list(THREAT_MODELS):
            found = aa[aa["norm"] == n]["eps"]
            if len(found):
                return n, float(found.max())
        at = f" at {norm}" if norm else " at linf or l2"
        raise RobustaxError(f"{where} has no AutoAttack cell{at}; pass --eps E (and --norm) for "
                            f"the per-example worst case over its attacks at that ε (it has "
                            f"attack cells at: {_budgets(attacked)})")
    if not np.isfinite(eps) or eps <= 0:
        raise RobustaxError(f"--eps {eps:g}: give a budget > 0 (ε = 0 is clean accuracy)")
    at = attacked[np.isclose(attacked["eps"], eps, rtol=1e-9, atol=0.0)]
    if norm is not None:
        at = at[at["norm"] == norm]
    norms = list(dict.fromkeys(at["norm"]))
    what = f"{norm} ε {eps:g}" if norm else f"ε {eps:g}"
    if not norms:
        raise RobustaxError(f"{where} has no AutoAttack or worst-case cell at {what}; it has "
                            f"attack cells at: {_budgets(attacked)}")
    if len(norms) > 1:
        raise RobustaxError(f"{where} has cells at ε {eps:g} under {' and '.join(norms)}; "
                            f"pass --norm to choose one")
    return norms[0], float(at["eps"].iloc[0])


def pick(records: pd.DataFrame, names: dict[str, str], norm: str, eps: float,
         rows: list[tuple[str, str, str]]) -> tuple[list[Pick], list[str]]:
    """Per (data, model, defense) row of ``rows``, its strongest evaluation at (norm, ε):
    AutoAttack where the row has it (the lowest of several), else the per-example worst case
    over its attacks there. Returns the picks and the rows that have no cell there."""
    at = records[(records["norm"] == norm) & (records["eps"] == eps)]
    attacked, worst = _attacked(at), at[at["attack"] == WORST]
    clean = records[records["attack"] == CLEAN]
    picks, missing = [], []
    for data, model, defense in rows:
        def of(frame, row=(data, model, defense)):
            return frame[(frame["data"] == row[0]) & (frame["model"] == row[1])
                         & (frame["defense"] == row[2])]

        cells, c = of(attacked), of(clean)
        if cells.empty:
            missing.append(f"{model} / {defense}")
            continue
        aa = cells[_is_autoattack(cells, names)]
        if len(aa):
            best = aa.sort_values("robust_acc", kind="stable").iloc[0]
            evaluation, result, used = AUTOATTACK, best, aa[aa["cell_id"] == best["cell_id"]]
        elif cells["attack"].nunique() > 1 and len(w := of(worst)):
            evaluation, result, used = WORST_CASE, w.iloc[0], cells
        else:
            evaluation, result, used = WORST_CASE, cells.iloc[0], cells.iloc[:1]
        picks.append(Pick(data, model, defense, evaluation, result, used,
                          c.iloc[0] if len(c) else None))
    return picks, missing


# --- one entry -------------------------------------------------------------------------------

def pct(fraction: float) -> str:
    """An accuracy as RobustBench writes it: a percentage string, rounded to two decimals."""
    return str(round(float(fraction) * 100, 2))


def eps_text(eps: float, norm: str) -> str:
    """ε as RobustBench writes it: ``"8/255"`` for an L∞ budget that is a multiple of 1/255
    with no short decimal form, else the decimal (``"0.3"``, ``"0.5"``)."""
    if norm == "linf" and 0 < eps < 1 and len(repr(float(eps))) > 8:
        k = round(eps * 255)
        if k and k / 255 == eps:
            return f"{k}/255"
    return f"{eps:g}"


def _options(text) -> dict:
    try:
        value = json.loads(text) if isinstance(text, str) and text else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def architecture(model: str, options: str) -> str:
    """The row's model label with its options (``cnn (dense 128, width 16)``); a row whose
    members are on several models: the label alone."""
    o = _options(options)
    if not o or any(isinstance(v, dict) for v in o.values()):
        return model
    return f"{model} ({', '.join(f'{k} {v}' for k, v in sorted(o.items()))})"


def _trained_here(defense: str, options: dict) -> bool:
    """Whether the row's weights were trained by this run (on the data set's training split);
    a row of loaded weights (``pretrained``, or a wrapper or member of them) is not."""
    members = options.get("members") or []
    return not (defense == PRETRAINED or options.get("base") == PRETRAINED
                or any(str(m) == PRETRAINED or str(m).endswith(f"/{PRETRAINED}")
                       for m in members))


def _joined(values) -> str:
    return ", ".join(dict.fromkeys(str(v) for v in values if isinstance(v, str) and v))


def evaluation_text(p: Pick) -> str:
    """How the robust accuracy was measured, in words."""
    if p.evaluation == AUTOATTACK:
        version = _options(p.result["attack_options"]).get("version")
        return f"AutoAttack ({version})" if version else "AutoAttack"
    attacks = list(dict.fromkeys(p.cells["attack"]))
    if len(attacks) == 1:
        return f"{attacks[0]} (the only attack at this ε)"
    return f"worst case over {', '.join(attacks)}"


def _draws(p: Pick) -> tuple[int, float | None] | None:
    """(draws, mean clean accuracy over them in %) of a random row scored over several
    draws (records' ``details``: ``draws``, ``draw_acc_mean``), else None."""
    details = p.result.get("details")
    d = json.loads(details) if isinstance(details, str) and details else {}
    if int(d.get("draws") or 1) <= 1:
        return None
    clean = p.clean.get("details") if p.clean is not None else None
    c = json.loads(clean) if isinstance(clean, str) and clean else {}
    mean = c.get("draw_acc_mean")
    return int(d["draws"]), None if mean is None else round(100 * float(mean), 2)


def entry(p: Pick, norm: str, eps: float, head: dict | None, paired: str | None,
          written_by: str, manifest: str = "ok") -> dict:
    """The RobustBench model-info object of a pick, with robustax's provenance under
    ``robustax``. ``paired``: the other row of an inference wrapper evaluated both naively and
    adaptively (None for every other row); ``manifest``: the run's manifest state."""
    r = p.result
    acc = pct(r["robust_acc"])
    defense_options = _options(r["defense_options"])
    members = defense_options.get("members") or []
    lo, hi = 100 * float(r["ci_low"]), 100 * float(r["ci_high"])
    n = int(r["examples"])
    note = (f"robustax: {evaluation_text(p)} at {NORM_TEXT.get(norm, norm)} ε = {eps:g} on {n:,} "
            f"{p.data} test images (95% interval {lo:.1f}–{hi:.1f}%); row {p.model} / "
            f"{p.defense}.")
    draws = _draws(p)
    if draws:
        mean = "" if draws[1] is None else f"; mean clean accuracy over the draws {draws[1]:.2f}%"
        note += (f" A random model, scored over {draws[0]} draws: an example counts only if it "
                 f"is classified correctly in every draw{mean}.")
    if paired:
        note += (f" An inference wrapper evaluated naively and adaptively (BPDA, EOT): rows "
                 f"{p.defense} and {paired} are one model; cite the lower of the two.")
    out = {
        "link": None, "name": None, "authors": None,
        "additional_data": False if _trained_here(p.defense, defense_options) else None,
        "number_forward_passes": len(members) if members else 1,
        "dataset": p.data, "venue": None,
        "architecture": architecture(p.model, r["model_options"]),
        "eps": eps_text(eps, norm),
        "clean_acc": None if p.clean is None else pct(p.clean["robust_acc"]),
        "reported": None,
        "autoattack_acc": acc if p.evaluation == AUTOATTACK else None,
    }
    if p.evaluation != AUTOATTACK:
        out[EXTERNAL] = acc
    out["footnote"] = note
    cells = pd.concat([p.cells, p.clean.to_frame().T]) if p.clean is not None else p.cells
    out["robustax"] = {
        "run": str(r["run"]), "model": p.model, "defense": p.defense, "data": p.data,
        "threat_model": THREAT_MODELS[norm], "norm": norm, "eps": float(eps),
        "evaluation": p.evaluation, "evaluation_text": evaluation_text(p),
        "attacks": {a: _options(o) for a, o in zip(p.cells["attack"], p.cells["attack_options"])},
        "examples": n, "correct": int(r["correct"]), "ci95_percent": [round(lo, 2), round(hi, 2)],
        "clean_examples": None if p.clean is None else int(p.clean["examples"]),
        "cells": list(p.cells["cell_id"]),
        "clean_cell": None if p.clean is None else str(p.clean["cell_id"]),
        "config_id": _joined(cells["config_id"]), "code_version": _joined(cells["code_version"]),
        "checkpoint": _joined(cells["checkpoint"]),
        "model_options": _options(r["model_options"]), "defense_options": defense_options,
        "ledger_head": None if head is None else head["head"],
        "ledger_length": None if head is None else head["length"],
        "ledger_key_id": None if head is None else head["key_id"],
        "paired_row": paired,
        "draws": draws[0] if draws else None,
        "clean_acc_mean_over_draws": draws[1] if draws else None,
        "manifest": manifest,
        "unfilled": list(UNFILLED),
        "written_by": written_by,
    }
    return out


# --- the leaderboard -------------------------------------------------------------------------

def _cell_text(text: str) -> str:
    """A label as a Markdown table cell: printable, pipes escaped."""
    return printable(text).replace("|", "\\|")


def markdown(board_rows: list[tuple[Path, dict]], folder: Path, run: str, norm: str, eps: float,
             head: dict | None, missing: list[str]) -> str:
    """leaderboard.md: the entries ranked by robust accuracy, with where each number comes from."""
    first = board_rows[0][1]
    data = ", ".join(dict.fromkeys(e["dataset"] for _, e in board_rows))
    n = ", ".join(f"{v:,}" for v in sorted({e["robustax"]["examples"] for _, e in board_rows}))
    rows = []
    for rank, (path, e) in enumerate(board_rows, 1):
        x = e["robustax"]
        robust = e["autoattack_acc"] if e["autoattack_acc"] is not None else e[EXTERNAL]
        lo, hi = x["ci95_percent"]
        defense = _cell_text(x["defense"]) + (" †" if x["paired_row"] else "")
        rows.append([str(rank), _cell_text(x["model"]), defense,
                     "–" if e["clean_acc"] is None else e["clean_acc"], robust,
                     f"{lo:.1f}–{hi:.1f}", _cell_text(x["evaluation_text"]),
                     str(e["number_forward_passes"]),
                     f"[{path.name}]({path.relative_to(folder).as_posix()})"])
    table = pd.DataFrame(rows, columns=["#", "model", "defense", "clean (%)", "robust (%)",
                                        "95% interval", "evaluation", "forward passes", "entry"])
    checked = ("each cell checked against manifest.json" + (" and the ledger" if head else "")
               if first["robustax"]["manifest"] == "ok" else
               "no manifest.json (the run predates manifests): cells checked for consistency "
               "only")
    ledger = ("no ledger" if head is None else
              f"ledger head `{head['head']}` ({head['length']} entries"
              + (f", signed by key `{head['key_id'][:16]}…`" if head["signed"] else ", unsigned")
              + "; `robustax verify` checks it)")
    parts = [(f"# Leaderboard: {_cell_text(run)}, {data}, {NORM_TEXT.get(norm, norm)} "
              f"ε = {first['eps']}\n"),
             (f"{n} test images. Robust accuracy from AutoAttack where the row has an AutoAttack "
             f"cell at this ε, else the per-example worst case over the attacks run there "
             f"(column *evaluation*), ranked by it. Config `{first['robustax']['config_id']}`, "
             f"code `{first['robustax']['code_version']}`, {ledger}; {checked}. Written by "
             f"`robustax leaderboard` ({first['robustax']['written_by']}).\n"),
             table.to_markdown(index=False, disable_numparse=True,
                               colalign=["right", "left", "left"] + ["right"] * 3
                               + ["left", "right", "left"]) + "\n",
             (f"Each entry is a RobustBench model-info file (`model_info/<data set>/"
             f"{THREAT_MODELS[norm]}/<id>.json` there). Fields robustax cannot know are null in "
             f"every entry: {', '.join(f'`{f}`' for f in UNFILLED)}; fill them in before "
             f"submitting. An entry measured by the worst case has `autoattack_acc` null and its "
             f"number in `external`: it is not an AutoAttack number. Provenance (cells, config "
             f"id, code version, ledger head) is under each entry's `robustax` key.\n")]
    if any(e["robustax"]["paired_row"] for _, e in board_rows):
        parts.append("† An inference wrapper evaluated naively and adaptively (BPDA, EOT): its "
                     "two rows are one model; cite the lower of the two.\n")
    if missing:
        parts.append(f"Rows without an attack cell at this budget (no entry): "
                     f"{', '.join(_cell_text(m) for m in missing)}.\n")
    return "\n".join(parts)


def build(run: RunDir, folder: Path, eps: float | None = None, norm: str | None = None) -> Board:
    """The entries and leaderboard.md of a run directory at (norm, ε) (see
    :func:`choose_budget`), written to nothing yet."""
    records = report_records(run)
    names = attack_names(run, records)
    norm, eps = choose_budget(records, names, str(run.root), eps, norm)
    order = table_order(records, run)
    present = set(zip(records["data"], records["model"], records["defense"]))
    rows = [(data, m, d) for data in dict.fromkeys(records["data"]) for m in order.models
            for d in order.defenses if (data, m, d) in present]
    picks, missing = pick(records, names, norm, eps, rows)
    head = read_head(run.root)
    written_by = code_version()
    defenses = {(p.data, p.model, p.defense) for p in picks}
    entries = []
    for p in picks:
        other = (p.defense[:-len(_ADAPTIVE)] if p.defense.endswith(_ADAPTIVE)
                 else p.defense + _ADAPTIVE)
        paired = other if (p.data, p.model, other) in defenses else None
        path = (folder / slug(p.data) / THREAT_MODELS[norm]
                / f"{slug(p.model)}.{slug(p.defense)}.json")
        entries.append((path, entry(p, norm, eps, head, paired, written_by,
                                    run.manifest.state)))
    entries.sort(key=lambda pe: -float(pe[1]["robustax"]["correct"])
                 / pe[1]["robustax"]["examples"])  # stable: plan order among ties
    run_name = str(records["run"].iloc[0]) if "run" in records else run.root.name
    text = markdown(entries, folder, run_name, norm, eps, head, missing)
    return Board(run_name, norm, eps, folder, dict(entries), text, missing)


def _json_bytes(obj: dict) -> bytes:
    """An entry as RobustBench's files are: its field order kept, indented by 2."""
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode()


def _inside(folder: Path, root: Path) -> Path | None:
    """``folder`` relative to the run directory ``root`` when it lies inside it, else None."""
    try:
        return folder.resolve().relative_to(root.resolve())
    except ValueError:
        return None


def write_leaderboard(run_dir: str | Path, out: str | Path | None = None,
                      eps: float | None = None, norm: str | None = None) -> Board:
    """Writes the entries and leaderboard.md of a run directory into ``out`` (default
    ``RUN_DIR/leaderboard/``). Inside the run directory they go through its manifest, under
    its lock (entries of an earlier leaderboard there that this one no longer has are
    removed); elsewhere through the one atomic writer, next to what is already there."""
    run = RunDir(Path(run_dir))
    if not run.cells.is_dir():
        raise RobustaxError(f"{run.root} is not a run directory (no cells/); pass the --out "
                            f"directory of a `robustax run`")
    folder = Path(out) if out is not None else run.root / FOLDER
    rel = _inside(folder, run.root)
    if rel is None:
        board = build(run, folder, eps, norm)
        for path, obj in board.entries.items():
            atomic_write_bytes(path, _json_bytes(obj))
        atomic_write_bytes(folder / "leaderboard.md", board.markdown.encode())
        return board
    if not rel.parts or rel.parts[0] in _RESERVED:
        raise RobustaxError(f"--out {folder} is the run directory or one of its own folders; "
                            f"pass a folder of its own (default {run.root / FOLDER})")
    folder = run.root / rel  # spelled as the run directory is, so manifest keys match
    with run_lock(run.root, "leaderboard"):
        run.adopt()
        board = build(run, folder, eps, norm)
        for path, obj in board.entries.items():
            run.store(path, _json_bytes(obj))
        run.store_text(folder / "leaderboard.md", board.markdown)
        prefix = rel.as_posix() + "/"
        written = {run.manifest.rel(p) for p in board.paths}
        for key in sorted(run.manifest.files):
            if key.startswith(prefix) and key not in written and key.endswith((".json", ".md")):
                run.remove(run.root / key)
    return board


def terminal(board: Board) -> str:
    """What ``robustax leaderboard`` prints: the ranking and where the files went."""
    lines = [(f"leaderboard of {printable(board.run)} at "
              f"{NORM_TEXT.get(board.norm, board.norm)} ε = {board.eps:g} (ranked by robust "
              f"accuracy):")]
    for rank, e in enumerate(board.entries.values(), 1):
        x = e["robustax"]
        robust = e["autoattack_acc"] if e["autoattack_acc"] is not None else e[EXTERNAL]
        lines.append(f"  {rank:>2}. {printable(x['model'])} / {printable(x['defense'])}: "
                     f"robust {robust}%, clean {e['clean_acc'] or '–'}%  "
                     f"[{printable(x['evaluation_text'])}]")
    if board.missing:
        lines.append(f"  no cell at this budget: {printable(', '.join(board.missing))}")
    lines.append(f"wrote {len(board.entries)} RobustBench entries and leaderboard.md to "
                 f"{printable(board.folder)}/ (link, name, authors, venue, reported left null: "
                 f"fill them in)")
    return "\n".join(lines)
