"""Train an image classifier by transfer learning on a folder of labelled images."""

__version__ = "0.1.0"
