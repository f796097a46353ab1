"""The image folder and the ways into the model: index and splits, bad-file check, decoding and augmentation, sampling, loaders, input pipelines."""
