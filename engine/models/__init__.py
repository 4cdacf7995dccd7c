"""Network definitions, one family per module."""
