"""glimpserl: train vision-language models that glimpse before they read."""

__version__ = "0.1.0"
