"""siammae: Siamese Masked Autoencoders for pretraining, tracking, evaluation and deployment."""

__version__ = "0.1.0"
