"""The engine's modes beyond text-to-image, each a variant of its steps: img2img, inpainting, the hires fix."""
