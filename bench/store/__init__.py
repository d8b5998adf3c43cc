"""The run directory store: everything robustax keeps on disk about a run, and the one way to
read it back verified.

Owns the one atomic writer and file naming (``io``), the content manifest (``manifest``),
finished cells, masks, per-step records and records.csv (``records``: :class:`RunDir`, the
one verified read path that resume, reports and the gate use) and provenance (``provenance``:
code version and environment, never identity).

Imports: bench.errors.
"""
