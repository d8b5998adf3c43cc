"""The sanity checklist of a run (Carlini et al. 2019, "On evaluating adversarial robustness";
Athalye et al. 2018): six checks that catch a broken attack, a masked gradient or too few
draws of a random model before a number is cited. Each is PASS, WARN or SKIP (the grid has nothing to check it with) and says
which numbers it rests on. Comparisons between attacks are per example, on the stored masks.

1. ``monotone``: robust accuracy never rises with ε (per attack); the largest ε drives it to
   ~0 where that ε is unbounded (the ball holds the whole box).
2. ``iterative``: iterative attacks are at least as strong as single-step ones: few examples
   that FGSM breaks survive every iterative attack.
3. ``white-box``: white-box attacks are at least as strong as black-box ones (Square, and
   AutoAttack's Square stage after its gradient stages) and as uniform noise of the same ε.
4. ``stable``: more steps, queries or restarts change little: from one run, the accuracy
   after three quarters of the budget (per-example first-success step or query count)
   against the full budget (a curve still falling at its end would fall further with more);
   and attacks of the grid that differ only in steps/restarts/queries.
5. ``gradients``: the clean cross-entropy input gradient is not exactly zero (recorded by the
   runner per row, on the function the attacks differentiate).
6. ``draws``: a random model's cells are scored over several draws (correct only if correct
   in every draw): the spread of single-draw accuracy, and whether the last draw still
   lowered the accuracy (more draws would lower it further).

A check WARNs when the numbers behind it exceed ``tolerance`` percentage points of the test
examples (default 1).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench.errors import printable
from bench.reports.tables import CORRUPTION
from bench.store.records import CLEAN, RunDir

PASS, WARN, SKIP = "PASS", "WARN", "SKIP"

SINGLE_STEP = {"fgsm"}
BLACK_BOX = {"square"}
NOISE = {"noise"}
ENSEMBLE = {"autoattack"}
WHITE_BOX = {"fgsm", "pgd", "apgd-ce", "apgd-dlr", "apgd-t", "fab", "autoattack"}
BUDGET_FIELDS = ("steps", "restarts", "queries")


@dataclasses.dataclass
class Item:
    """One check: its status, a one-line summary with the numbers, and per-case rows."""

    key: str
    title: str
    status: str
    summary: str
    rows: list[dict] = dataclasses.field(default_factory=list)


def _options(text) -> dict:
    try:
        opts = json.loads(text) if isinstance(text, str) and text else {}
    except json.JSONDecodeError:
        opts = {}
    return opts if isinstance(opts, dict) else {}


def attack_names(run: RunDir, records: pd.DataFrame) -> dict[str, str]:
    """Registered attack name per attack label: from config.json, else guessed from options."""
    names: dict[str, str] = {}
    path = run.root / "config.json"
    if path.is_file():
        try:
            for a in json.loads(path.read_text()).get("config", {}).get("attacks", []):
                names[a.get("label", a["name"])] = a["name"]
        except (json.JSONDecodeError, KeyError, AttributeError):
            names = {}
    for label, opts in zip(records["attack"], records["attack_options"]):
        if label == CLEAN or label in names:
            continue
        o = _options(opts)
        names[label] = ("autoattack" if "version" in o else "square" if "queries" in o
                        else "fgsm" if "start_frac" in o else "pgd" if "steps" in o else label)
    return names


def _kind(name: str, opts: dict) -> str:
    if name in SINGLE_STEP or (name == "pgd" and opts.get("steps") == 1
                               and (opts.get("restarts") or 1) == 1):
        return "single-step"
    if name in BLACK_BOX:
        return "black-box"
    if name in NOISE:
        return "noise"
    if name in WHITE_BOX:
        return "iterative"
    return "other"


def _pct(k: float, n: float) -> float:
    return 100.0 * k / n if n else float("nan")


def _fmt_eps(e: float) -> str:
    return f"{e:g}"


class _Run:
    """Records and masks of one run, with the clean mask of every row at hand."""

    def __init__(self, run: RunDir, records: pd.DataFrame):
        self.run = run
        self.records = records[records["attack"] != "worst-case"].reset_index(drop=True)
        self.names = attack_names(run, self.records)
        self.opts = {cid: _options(o) for cid, o in
                     zip(self.records["cell_id"], self.records["attack_options"])}
        clean = self.records[self.records["attack"] == CLEAN]
        self.clean_cell = {(m, d): c for m, d, c in
                           zip(clean["model"], clean["defense"], clean["cell_id"])}
        # Corruptions (norm "severity") are not attacks: their severities are not nested
        # balls (accuracy need not fall with severity), there is no gradient or query budget
        # to check, and no attack to compare them with. No check reads them.
        self.attacked = self.records[(self.records["attack"] != CLEAN)
                                     & (self.records["norm"] != CORRUPTION)]
        self._masks: dict[str, np.ndarray] = {}

    def mask(self, cell_id: str) -> np.ndarray:
        if cell_id not in self._masks:
            self._masks[cell_id] = self.run.read_mask(cell_id)
        return self._masks[cell_id]

    def clean(self, model: str, defense: str) -> np.ndarray | None:
        c = self.clean_cell.get((model, defense))
        return None if c is None else self.mask(c)

    def kind(self, row) -> str:
        return _kind(self.names.get(row["attack"], row["attack"]), self.opts[row["cell_id"]])


def _status(warns: int, checked: int) -> str:
    return WARN if warns else PASS if checked else SKIP


def check_monotone(r: _Run, tolerance: float) -> Item:
    """Robust accuracy vs ε per attack: the largest rise and how many examples come back."""
    rows, warns, checked, zero_ok, zero_warn, zero_open = [], 0, 0, 0, 0, []
    for (m, d, a, norm), g in r.attacked.groupby(["model", "defense", "attack", "norm"],
                                                 sort=False):
        g = g.sort_values("eps")
        clean = r.clean(m, d)
        masks = ([clean] if clean is not None else []) + [r.mask(c) for c in g["cell_id"]]
        eps = ([0.0] if clean is not None else []) + list(g["eps"])
        accs = [100 * float(np.mean(x)) for x in masks]
        if len(masks) < 3:  # clean and one budget: the engine already ANDs with clean
            continue
        checked += 1
        running_min = np.minimum.accumulate(accs)
        rise = float(np.max(np.array(accs) - running_min))
        lost = np.logical_or.accumulate([~x for x in masks])
        back = int(np.sum(np.any(np.stack(masks[1:]) & lost[:-1], axis=0)))
        row = {"model": m, "defense": d, "attack": a, "norm": norm, "largest rise (pp)": rise,
               "examples robust again at a larger ε": back,
               "largest ε": eps[-1], "accuracy there (%)": accs[-1]}
        bad = rise > tolerance
        warns += bad
        unbounded = _unbounded(r, norm, eps[-1], m, d)
        if accs[-1] <= tolerance:
            zero_ok += 1
        elif unbounded:
            zero_warn += 1
            bad = True
            warns += 1
        else:
            zero_open.append((accs[-1], f"{m}/{d}/{a} {norm}: {accs[-1]:.1f}% at ε = {eps[-1]:g}"))
        row["status"] = WARN if bad else PASS
        rows.append(row)
    if not checked:
        return Item("monotone", "accuracy falls with ε, to ~0 at an unbounded ε", SKIP,
                    "no attack ran at two or more budgets above 0")
    worst = max(rows, key=lambda x: x["largest rise (pp)"])
    back = sum(x["examples robust again at a larger ε"] for x in rows)
    if worst["largest rise (pp)"] > 0:
        text = (f"{checked} curves; largest rise {worst['largest rise (pp)']:.1f} pp "
                f"({worst['model']}/{worst['defense']}/{worst['attack']} {worst['norm']})")
    else:
        text = f"{checked} curves, none rising with ε"
    text += (f"; {back} examples robust again at a larger ε, over all curves; the largest ε "
             f"reaches ≤ {tolerance:g}% in {zero_ok} of {checked} curves")
    if zero_warn:
        text += f", {zero_warn} stay above it at an unbounded ε"
    if zero_open:
        text += (f"; {len(zero_open)} not checked (largest ε bounded; add e.g. L∞ ε = 1 to "
                 f"test), e.g. {max(zero_open)[1]}")
    return Item("monotone", "accuracy falls with ε, to ~0 at an unbounded ε",
                _status(warns, checked), text, rows)


def _unbounded(r: _Run, norm: str, eps: float, model: str, defense: str) -> bool:
    """Whether the ε-ball holds the whole [0, 1] box (L∞ ε ≥ 1; L2 ε ≥ √d; L1 ε ≥ d, with d
    the input size recorded beside the gradient check)."""
    if norm == "linf":
        return eps >= 1.0
    g = gradient_record(r.run, r.clean_cell.get((model, defense), ""))
    if not g or not g.get("examples"):
        return False
    d = g["entries"] / g["examples"]
    return eps >= (math.sqrt(d) if norm == "l2" else d)


def _pairwise(r: _Run, weak_kinds: set[str], strong_kinds: set[str], tolerance: float,
              label: str) -> tuple[list[dict], int, int]:
    """Per (model, defense, norm, ε > 0): examples each weak attack broke that every strong
    attack left robust (the strong side is the per-example worst case over its attacks)."""
    rows, warns, checked = [], 0, 0
    a = r.attacked[r.attacked["eps"] > 0]
    for (m, d, norm, e), g in a.groupby(["model", "defense", "norm", "eps"], sort=False):
        kinds = [r.kind(row) for _, row in g.iterrows()]
        strong = [c for c, k in zip(g["cell_id"], kinds) if k in strong_kinds]
        weak = [(at, c) for at, c, k in zip(g["attack"], g["cell_id"], kinds) if k in weak_kinds]
        if not strong or not weak:
            continue
        s_mask = np.logical_and.reduce([r.mask(c) for c in strong])
        s_names = [at for at, k in zip(g["attack"], kinds) if k in strong_kinds]
        for at, c in weak:
            w = r.mask(c)
            n = w.size
            only_weak = int(np.sum(s_mask & ~w))
            only_strong = int(np.sum(~s_mask & w))
            checked += 1
            bad = _pct(only_weak, n) > tolerance
            warns += bad
            rows.append({"model": m, "defense": d, "norm": norm, "eps": e, label: at,
                         "against": "+".join(s_names),
                         f"{label} acc (%)": _pct(int(w.sum()), n),
                         "strong acc (%)": _pct(int(s_mask.sum()), n),
                         f"broken only by {label}": only_weak,
                         "broken only by the others": only_strong,
                         f"share broken only by {label} (%)": _pct(only_weak, n),
                         "status": WARN if bad else PASS})
    return rows, warns, checked


def _pairwise_summary(rows: list[dict], label: str, what: str) -> str:
    share = f"share broken only by {label} (%)"
    worst = max(rows, key=lambda x: x[share])
    return (f"{len(rows)} comparisons; at most {worst[f'broken only by {label}']} examples "
            f"({worst[share]:.1f}%) broken by {worst[label]} and by no {what} attack "
            f"({worst['model']}/{worst['defense']} {worst['norm']} ε = {worst['eps']:g}: "
            f"{worst[f'{label} acc (%)']:.1f}% vs {worst['strong acc (%)']:.1f}%)")


def check_iterative(r: _Run, tolerance: float) -> Item:
    title = "iterative attacks at least as strong as single-step ones, per example"
    rows, warns, checked = _pairwise(r, {"single-step"}, {"iterative"}, tolerance,
                                     "single-step")
    if not checked:
        return Item("iterative", title, SKIP,
                    "no norm and ε with both a single-step (FGSM) and an iterative attack")
    return Item("iterative", title, _status(warns, checked),
                _pairwise_summary(rows, "single-step", "iterative"), rows)


def check_white_box(r: _Run, tolerance: float) -> Item:
    title = "white-box at least as strong as black-box (Square) and uniform noise, per example"
    white = {"iterative", "single-step"}
    rows, warns, checked = _pairwise(r, {"black-box", "noise"}, white, tolerance, "black-box")
    texts = [_pairwise_summary(rows, "black-box", "white-box")] if rows else []
    # AutoAttack runs Square only on what its gradient stages left: every point its Square
    # stage breaks is one the white-box stages missed.
    aa_rows = []
    for row in r.attacked[r.attacked["eps"] > 0].itertuples():
        if r.names.get(row.attack) not in ENSEMBLE or not row.details:
            continue
        broken = _options(row.details).get("broken_by", {})
        if "square" not in broken:
            continue
        k, n = int(broken["square"]), int(row.examples)
        bad = _pct(k, n) > tolerance
        checked += 1
        warns += bad
        aa_rows.append({"model": row.model, "defense": row.defense, "norm": row.norm,
                        "eps": row.eps, "black-box": f"{row.attack}: square stage",
                        "against": "its gradient stages",
                        "broken only by black-box": k,
                        "share broken only by black-box (%)": _pct(k, n),
                        "status": WARN if bad else PASS})
    if aa_rows:
        worst = max(aa_rows, key=lambda x: x["share broken only by black-box (%)"])
        texts.append(f"AutoAttack's Square stage broke at most {worst['broken only by black-box']}"
                     f" points ({worst['share broken only by black-box (%)']:.1f}%) that its "
                     f"gradient stages left ({worst['model']}/{worst['defense']} "
                     f"{worst['norm']} ε = {worst['eps']:g})")
    if not checked:
        return Item("white-box", title, SKIP,
                    "no Square, noise or AutoAttack cell beside a white-box attack")
    return Item("white-box", title, _status(warns, checked), "; ".join(texts), rows + aa_rows)


def budget_curve(mask: np.ndarray, clean: np.ndarray, spent: np.ndarray, budget: int,
                 kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Robust accuracy (%) after each budget 0..``budget`` from one run's per-example record.

    ``kind`` ``steps``: ``spent`` is the first iterate that fooled the model (-1: none);
    ``queries``: the queries spent (the whole budget when the attack failed). An example
    counts as broken at budget ``t`` once the attack had fooled it by then; the last point is
    the cell's own mask, so the curve ends at the recorded accuracy."""
    mask, clean, spent = (np.asarray(a) for a in (mask, clean, spent))
    t = np.arange(budget + 1)
    if kind == "steps":
        fooled_by = (spent[None] >= 0) & (spent[None] <= t[:, None])
    else:
        fooled_by = spent[None] <= t[:, None]
    robust = mask[None] | (clean[None] & ~fooled_by)
    robust[-1] = mask
    return t, 100 * robust.mean(axis=1)


def curve_of(r: _Run, row) -> tuple[str, np.ndarray, np.ndarray] | None:
    """(kind, budgets, accuracies) of a cell whose info records its per-example budget."""
    info = r.run.read_info(row["cell_id"])
    clean = r.clean(row["model"], row["defense"])
    if clean is None or _draws(info) > 1:
        # Scored over several draws, a cell's mask is not what its attack saw: points the
        # attack never fooled fail in some draw, and the curve would drop at its last point.
        return None
    opts = r.opts[row["cell_id"]]
    if "first_fooled_step" in info and opts.get("steps"):
        t, acc = budget_curve(r.mask(row["cell_id"]), clean, info["first_fooled_step"],
                              int(opts["steps"]), "steps")
        return "steps", t, acc
    if "queries" in info and opts.get("queries"):
        budget = int(opts["queries"]) * int(opts.get("restarts") or 1)
        t, acc = budget_curve(r.mask(row["cell_id"]), clean, info["queries"], budget, "queries")
        return "queries", t, acc
    return None


def check_stable(r: _Run, tolerance: float) -> Item:
    title = "more steps, queries or restarts change little"
    rows, warns, checked = [], 0, 0
    for _, row in r.attacked[r.attacked["eps"] > 0].iterrows():
        c = curve_of(r, row)
        if c is None:
            continue
        kind, t, acc = c
        half = (3 * (len(t) - 1)) // 4  # three quarters of the budget
        drop = float(acc[half] - acc[-1])
        checked += 1
        bad = drop > tolerance
        warns += bad
        rows.append({"model": row["model"], "defense": row["defense"], "attack": row["attack"],
                     "norm": row["norm"], "eps": row["eps"], "budget": f"{t[-1]} {kind}",
                     "at 3/4 budget": int(t[half]),
                     "acc at 3/4 (%)": float(acc[half]), "acc at full (%)": float(acc[-1]),
                     "drop over the last quarter (pp)": drop, "status": WARN if bad else PASS})
    # attacks of the grid that differ only in their budget
    a = r.attacked[r.attacked["eps"] > 0]
    sig = {}
    for cid, label in zip(a["cell_id"], a["attack"]):
        o = {k: v for k, v in r.opts[cid].items() if k not in BUDGET_FIELDS + ("unroll",
                                                                             "rel_step_size")}
        sig[cid] = (r.names.get(label, label), json.dumps(o, sort_keys=True))
    pair_rows = []
    for (m, d, norm, e), g in a.groupby(["model", "defense", "norm", "eps"], sort=False):
        cells = list(zip(g["attack"], g["cell_id"]))
        for i, (a1, c1) in enumerate(cells):
            for a2, c2 in cells[i + 1:]:
                if sig[c1] != sig[c2]:
                    continue
                m1, m2 = r.mask(c1), r.mask(c2)
                diff = abs(_pct(int(m1.sum()) - int(m2.sum()), m1.size))
                checked += 1
                bad = diff > tolerance
                warns += bad
                pair_rows.append({"model": m, "defense": d, "attack": f"{a1} vs {a2}",
                                  "norm": norm, "eps": e,
                                  "difference (pp)": diff,
                                  "examples that differ": int(np.sum(m1 != m2)),
                                  "status": WARN if bad else PASS})
    if not checked:
        return Item("stable", title, SKIP,
                    "no per-example step/query record (PGD, Square) and no two attacks that "
                    "differ only in steps, restarts or queries")
    texts = []
    if rows:
        worst = max(rows, key=lambda x: x["drop over the last quarter (pp)"])
        n_bad = sum(x["status"] == WARN for x in rows)
        texts.append(f"{len(rows)} curves; the last quarter of the budget lowers accuracy by at "
                     f"most {worst['drop over the last quarter (pp)']:.1f} pp "
                     f"({worst['model']}/{worst['defense']}/{worst['attack']} {worst['norm']} "
                     f"ε = {worst['eps']:g}: {worst['acc at 3/4 (%)']:.1f}% after "
                     f"{worst['at 3/4 budget']} → {worst['acc at full (%)']:.1f}% after "
                     f"{worst['budget']}); {n_bad} curves still falling by more than "
                     f"{tolerance:g} pp")
    if pair_rows:
        worst = max(pair_rows, key=lambda x: x["difference (pp)"])
        texts.append(f"{len(pair_rows)} pairs differing only in budget; largest difference "
                     f"{worst['difference (pp)']:.1f} pp ({worst['attack']})")
    return Item("stable", title, _status(warns, checked), "; ".join(texts), rows + pair_rows)


def gradient_record(run: RunDir, clean_cell: str) -> dict | None:
    return run.read_gradient(clean_cell) if clean_cell else None


def check_gradients(r: _Run, tolerance: float) -> Item:
    title = "gradients do not vanish (exactly-zero input gradients on clean inputs)"
    rows, warns = [], 0
    for (m, d), cid in r.clean_cell.items():
        g = gradient_record(r.run, cid)
        if g is None:
            continue
        share = _pct(g["zero_examples"], g["examples"])
        bad = share > tolerance or g.get("nonfinite_examples", 0) > 0
        warns += bad
        rows.append({"model": m, "defense": d, "differentiated": g.get("function", "model"),
                     "examples with a zero gradient": g["zero_examples"],
                     "share (%)": share,
                     "zero entries (%)": _pct(g["zero_entries"], g["entries"]),
                     "non-finite": g.get("nonfinite_examples", 0),
                     "status": WARN if bad else PASS})
    if not rows:
        return Item("gradients", title, SKIP, "no gradient record in this run directory (runs "
                    "made before the checklist: rerun `robustax run` into it to add them)")
    worst = max(rows, key=lambda x: x["share (%)"])
    return Item("gradients", title, _status(warns, len(rows)),
                f"{len(rows)} rows; at most {worst['examples with a zero gradient']} examples "
                f"({worst['share (%)']:.1f}%) with an exactly zero cross-entropy gradient "
                f"({worst['model']}/{worst['defense']}); {warns} rows above {tolerance:g}%",
                rows)


def _draws(info: dict) -> int:
    """How many draws a cell was scored over (1: a deterministic model, or one draw)."""
    d = info.get("draw_correct")
    return 1 if d is None else int(np.shape(d)[-1])


def check_draws(r: _Run, tolerance: float) -> Item:
    title = "a random model's accuracy over its draws"
    rows, warns = [], 0
    for _, row in r.records.iterrows():
        d = _options(row["details"]).get("draws")
        if not d or d < 2:
            continue
        correct = np.asarray(r.run.read_info(row["cell_id"])["draw_correct"], bool)
        single = 100 * correct.mean(axis=0)
        running = 100 * np.logical_and.accumulate(correct, axis=1).mean(axis=0)
        last = float(running[-2] - running[-1])
        bad = last > tolerance
        warns += bad
        rows.append({"model": row["model"], "defense": row["defense"], "attack": row["attack"],
                     "norm": row["norm"], "eps": row["eps"], "draws": int(d),
                     "single-draw min (%)": float(single.min()),
                     "single-draw mean (%)": float(single.mean()),
                     "single-draw max (%)": float(single.max()),
                     "all draws (%)": float(running[-1]),
                     "drop by the last draw (pp)": last, "status": WARN if bad else PASS})
    if not rows:
        return Item("draws", title, SKIP, "no random model scored over several draws")
    widest = max(rows, key=lambda x: x["single-draw max (%)"] - x["single-draw min (%)"])
    gap = max(rows, key=lambda x: x["single-draw mean (%)"] - x["all draws (%)"])
    return Item("draws", title, _status(warns, len(rows)),
                f"{len(rows)} cells scored over {rows[0]['draws']} draws; single-draw accuracy "
                f"spans at most {widest['single-draw min (%)']:.1f}–"
                f"{widest['single-draw max (%)']:.1f}% ({widest['model']}/{widest['defense']}/"
                f"{widest['attack']} ε = {widest['eps']:g}); correct in every draw is at most "
                f"{gap['single-draw mean (%)'] - gap['all draws (%)']:.1f} pp below the "
                f"single-draw mean ({gap['model']}/{gap['defense']}/{gap['attack']} "
                f"ε = {gap['eps']:g}: {gap['single-draw mean (%)']:.1f}% → "
                f"{gap['all draws (%)']:.1f}%); {warns} cells still lost more than "
                f"{tolerance:g} pp to their last draw (more draws would lower them further)",
                rows)


CHECKS = (check_monotone, check_iterative, check_white_box, check_stable, check_gradients,
          check_draws)


def checklist(run: RunDir, records: pd.DataFrame, tolerance: float = 1.0) -> list[Item]:
    """Every check on a run's records (worst-case rows are ignored) and stored masks."""
    r = _Run(run, records)
    return [check(r, tolerance) for check in CHECKS]


def terminal(items: list[Item]) -> str:
    """One line per check: status, check, the numbers."""
    import textwrap

    lines = ["Sanity checklist (Carlini et al. 2019; WARN: look before citing):"]
    for i in items:
        lines.append(textwrap.fill(printable(f"{i.status:<4}  {i.title}: {i.summary}"), 100,
                                   subsequent_indent="      "))
    return "\n".join(lines) + "\n"


def markdown(items: list[Item], max_rows: int = 12) -> str:
    """checklist.md: one section per check with its status, summary and the cases behind it
    (warnings first, then the closest calls)."""
    parts = ["# Sanity checklist\n",
             "| check | status | numbers |\n|:--|:--|:--|\n" + "".join(
                 f"| {i.title} | **{i.status}** | {i.summary} |\n" for i in items)]
    for i in items:
        if not i.rows:
            continue
        frame = pd.DataFrame(i.rows)
        num = [c for c in frame.columns if c.startswith(("share", "largest rise", "drop",
                                                          "difference"))]
        frame["_w"] = frame["status"] == WARN
        frame = frame.sort_values(["_w"] + num[:1], ascending=False, kind="stable")
        frame = frame.drop(columns="_w")
        for col in ("eps", "largest ε"):  # budgets as written, not rounded to .1f
            if col in frame.columns:
                frame[col] = [f"{v:g}" for v in frame[col]]
        shown = frame.head(max_rows)
        more = len(frame) - len(shown)
        parts.append(f"## {i.title}: {i.status}\n\n{i.summary}.\n\n"
                     + shown.to_markdown(index=False, floatfmt=".1f") + "\n"
                     + (f"\n({more} more rows in checklist.json)\n" if more else ""))
    return "\n".join(parts)


def write(items: list[Item], run: RunDir) -> list[Path]:
    """checklist.md and checklist.json in the run directory."""
    run.store_text(run.root / "checklist.md", markdown(items))
    run.store_text(run.root / "checklist.json", json.dumps(
        [dataclasses.asdict(i) for i in items], indent=2, default=float) + "\n")
    return [run.root / "checklist.md", run.root / "checklist.json"]
