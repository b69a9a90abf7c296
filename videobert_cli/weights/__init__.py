"""Model weights: where they come from (local folders, caches, offline packages) and whether they are trained."""
