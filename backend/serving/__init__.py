"""From a task to pre-labels: which model serves a project (champions) and the predictor (fetch,
batch, map classes, regions)."""
