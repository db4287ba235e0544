"""The registry: everything champion reads from and writes to MLflow's tracking store and Model Registry.

In: a tracking URI (MLFLOW_TRACKING_URI, or `mlflow.db` here), credentials, and the stages' requests.
Out: runs, registered versions, aliases and the events that record every alias move.

Layers, lowest first: `client` (an MLflow client; MLflow's failures as champion's errors; paged
searches), `auth` (credentials), `tracking` (the store, runs, configs, git tags), `integrity` and
`storage` (content hashes; model files registered by reference), `exports` (the export record and
the one verification of an exported file), `lease` (one holder per model at a time), `history`
(every alias move as an event), `policy` (the bar a model's candidates meet), `release` (the one way
a passing gate registers and moves an alias), `rollback`, and `outage` (when the server is away).
"""
