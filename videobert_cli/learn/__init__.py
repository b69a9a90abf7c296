"""Learning the fusion on stored features: corpus, training, evaluation, applying a checkpoint."""
