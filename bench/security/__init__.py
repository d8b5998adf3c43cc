"""Artifact security: keys, authenticated encryption, Ed25519 signatures, the signed ledger.

Owns every cryptographic operation (``crypto``, all primitives from the ``cryptography``
package), the append-only hash-chained results ledger (``ledger``), a sweep's keys and the
verification of a whole run directory (``artifacts``) and the ``robustax keys | sign |
verify | encrypt | decrypt`` commands (``commands``).

Imports: bench.errors, bench.store, defenses.
"""
