"""Adapters to engines the SDK plugs into (Ray Data, Spark); each imports its engine lazily.

`import sdk` never imports this package's engines: `sdk.integrations.ray_data` needs the `[ray]` extra
(pyarrow, pandas and ray come with it) only when a predictor is called or a job is run.
"""
