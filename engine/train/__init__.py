"""Training loops and datasets."""
