"""sdcli: text-to-image from the command line, with a hand-written, guided Stable Diffusion loop."""

__version__ = "0.1.0"
