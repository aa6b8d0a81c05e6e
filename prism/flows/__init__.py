"""Flows: frames parsed into canonical bidirectional flow keys, and what a flow turned out to be."""
