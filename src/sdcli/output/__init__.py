"""Output: file names and atomic writes, PNG metadata, contact sheets, and what goes to stderr."""
