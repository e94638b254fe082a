"""What the metrics of every property share: the input checks, the per-sample result, the ranking of features, the
similarity of two attributions, and the explainer that metrics call again on changed inputs or models."""
