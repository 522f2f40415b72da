"""Continual multi-task training: tasks learnt in sequence, replay of earlier ones, forgetting measured."""
