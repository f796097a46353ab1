"""The image folder and the ways into the model: layout, index and splits, bad-file check, decoding and augmentation, sampling, loaders, input pipelines."""
