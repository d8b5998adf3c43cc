"""Reports: what a finished run directory becomes for a paper and for the regression gate.

Owns the tables (``tables``: terminal summary, Markdown, LaTeX, CSV, and the row and column
:class:`~bench.reports.tables.Order`, computed once per report and passed down), plots
(``figures``), report.md (``document``), the sanity checklist (``checklist``), the
per-example regression gate (``compare``), RobustBench model-info entries and a Markdown
leaderboard (``leaderboard``) and the report command's driver (``report``). Reads runs only
through :mod:`bench.store`.

Imports: bench.errors, bench.store.
"""
