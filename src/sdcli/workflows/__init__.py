"""Workflows: generate, batch and sweep, each a loop over the engine that writes what it makes."""
