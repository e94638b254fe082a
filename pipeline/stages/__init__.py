"""The stages of one job, each on its own: data (samples and batches), model, explain (config -> analyzer), the
PatternNet fit, evaluate (metrics), and the report written into the run's output folder."""
