"""proca.losses."""
