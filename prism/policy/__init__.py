"""Replication policies: which cells get a new flow's packets, within a budget."""
