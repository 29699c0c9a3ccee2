"""MLflow: the tracking store, writing runs, reading them back, and the UI server."""
