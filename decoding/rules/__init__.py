"""Acceptance rules as pure tensor functions, one rule family per file.

Notation everywhere in this package: `p` is the TARGET distribution (the model's guided,
processed distribution from the current forward pass), `q` is the DRAFT distribution (the one
the draft token was drawn from). SJD's code calls them the other way round in places; the
papers use p = target. All functions are vectorised over the verified window (rows = positions).
"""
