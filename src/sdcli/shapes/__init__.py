"""The built-in "shapes" model: its world, its pixel judge and its training."""
