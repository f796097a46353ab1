"""The one evaluate(), metrics, the report and its plots, and using a saved model (eval, predict)."""
