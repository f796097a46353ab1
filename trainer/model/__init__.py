"""The classifier (backbone + head), the model folder, weights files and export."""
