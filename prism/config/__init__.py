"""PRISM's YAML configuration: loading, checking every key with its line, and its types."""
