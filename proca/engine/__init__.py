"""proca.engine."""
