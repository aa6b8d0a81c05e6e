"""Several controllers on one network: mastership of switches, shared state, takeover."""
