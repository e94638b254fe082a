"""MLflow: the tracking store, models from the registry, what identifies a run's inputs, and publishing a finished
output folder as a run."""
