"""chimney layer."""
