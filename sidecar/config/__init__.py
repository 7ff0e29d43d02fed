"""Configuration: the YAML validated into typed settings (the lowest layer)."""
