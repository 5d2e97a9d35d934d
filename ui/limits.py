"""Every bound on what one request may ask of the public server, in one place (the README quotes them)."""
from __future__ import annotations

from decoding.trace_limits import TraceLimits

TRACE_LIMITS = TraceLimits()  # uploaded trace files: size, grid, steps, list lengths
MAX_UPLOAD_BYTES = TRACE_LIMITS.max_bytes  # also Gradio's own `max_file_size` for every upload

MAX_SEED = 2**31 - 1
MAX_COMPARE_SEEDS = 5  # seeds averaged per decoder on the Compare tab
MAX_COMPARE_RUNS = 24  # decoders x seeds in one Compare request
MAX_BROWSER_SWEEP = 60  # images in one Sweep request; larger sweeps from the command line
MAX_SWEEP_VALUES = 12
MAX_CODEBOOK_NEIGHBOURS = 64

MAX_JOBS_PER_SESSION = 2  # model jobs running or waiting, per browser session / API client
MAX_JOBS_PER_ADDRESS = 4  # and per client address
QUEUE_SIZE = 32  # Gradio's queue (all clients together)
MODEL_WORKERS = 8  # handlers admitted at once; the model itself runs one call at a time (ModelGate)

MAX_SESSION_TRACES = 16  # traces kept per session (the Codebook tab's statistics read them)
MAX_STORED_TRACES = 256  # traces kept by the whole server
MAX_STORED_WEIGHT = 3_000_000  # list entries kept by the whole server (~100 MB of Python lists)
SESSION_IDLE_S = 3600  # a session's traces are dropped after an hour without a request
FILE_MAX_AGE_S = 3600  # the app's temporary files (trace downloads, PNGs) and Gradio's cache
FILE_MAX_COUNT = 500
