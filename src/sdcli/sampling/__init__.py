"""Sampling: the sampler registry, the diffusers scheduler wrapper, and the denoising loop."""
