"""Training loops and what they share: checkpoints, data batching, logging."""
