"""Reflow (rectified flow) and one-step distillation of SmolVLA policies, and their measurement."""
