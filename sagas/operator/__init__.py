"""Operator tools: what a human does when a saga needs one. The CLI is a thin shell over these.

- ``plan``: what a saga would do, computed from the catalog alone (no provider, no ledger);
- ``resolution``: retry a failed compensation, or record that a saga was resolved by hand;
- ``orphans``: provider resources named or tagged for a saga that no saga owns, and their removal.

Nothing here imports Prefect.
"""
