"""Input pipelines: how a batch of training images reaches the model (PIL, the pixel cache, GPU decoding) and the feature cache for frozen backbones."""
