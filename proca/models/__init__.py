"""proca.models."""
