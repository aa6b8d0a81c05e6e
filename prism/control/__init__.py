"""The controller across switches: cell health, failover and the views the REST API shows."""
