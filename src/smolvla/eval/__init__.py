"""Closed-loop evaluation of policies in simulation (needs the `sim` extra)."""
