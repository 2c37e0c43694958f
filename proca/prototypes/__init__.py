"""proca.prototypes."""
