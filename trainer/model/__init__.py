"""The model: classifier (backbone + head), backbones, the model folder, weights files, export."""
