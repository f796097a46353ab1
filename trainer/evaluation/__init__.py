"""Evaluation: the one evaluate(), metrics, the report and its plots, and the eval and predict commands."""
