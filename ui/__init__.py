"""Serving concerns of the public app, kept out of `decoding/` and `analysis/`: request limits
(`limits`), the bounded store of this server's traces (`store`), per-client job limits and the model
gate (`jobs`), escaping of untrusted text (`text`), input parsing (`parse`), decoder widgets from
parameter metadata (`widgets`), the app's temporary files (`tempfiles`). Nothing here raises
`gr.Error`: functions raise ValueError with a specific message and `app.py` shows it.
"""
