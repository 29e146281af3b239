"""The `slim` command line."""
