"""The Mirroring Director of one switch: FSC entries, profile groups, failover and repair."""
