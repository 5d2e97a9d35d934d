"""Figures and tables computed from traces alone (`decoding.trace.Trace`); nothing here calls a model.

One concept per module: `heatmaps` (acceptance on the token grid), `steps` (per forward pass, by
depth, rows per pass), `replay` (pass by pass, with each pass's tree and rows), `structure` (a pass's
chain / tree / rows, chain defaults for old traces), `race` (decoders after equal forward passes),
`acceptance` (tokens per pass histograms per decoder), `drafter` (draft = target top-1, drafter cost),
`codebook` (projections, per-code statistics, nearest codes; a density above 2048 codes), `compare`
(decoders side by side), `ambiguity` (target top-1 probability and entropy), `sweeps` (hyperparameter
sweeps), `static` (matplotlib exports), `definitions` (the captions), `style` (colours and layout).

Views for the app to wire (each takes traces, returns a plotly figure): `race.race_figure({name: trace},
patch)`, `acceptance.acceptance_histograms({name: traces})` (+ `acceptance_table`, `TABLE_COLUMNS`),
`steps.rows_figure(trace)`, `drafter.drafter_figure(traces)`; `steps.replay_figure` draws trees and rows
by itself. Captions: `definitions.define("race")`, `"accepted_length_histogram"`, `"rows_per_pass"`,
`"verified_tree"`, `"target_top1_agreement"`. `codebook.ProjectionStore(cache_dir)`: cache_dir = a user
cache dir (`codebook.default_cache_dir()`), never the source tree; the bundled projections are read from
`assets/projections` by default.
"""
