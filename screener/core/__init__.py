"""Shared records and plumbing, below every concern and every actor.

`models` (the typed records passed between actors), `names` (the venue's symbol pattern and
interval names, one table per fact), `config` (the settings tree from the environment),
`metrics`, `logs`, `periodic` (fixed-grid loops), `supervise` (restart with backoff) and
`snapshot` (latest-value holders that HTTP reads). Imports nothing above itself.
"""
