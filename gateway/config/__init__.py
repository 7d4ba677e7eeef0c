"""Configuration: the YAML contract validated into immutable objects."""
