"""pararl."""
