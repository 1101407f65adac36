"""Guidance: wrappers from a predictor to a guided predictor, and the registry that chains them."""
