"""The trace-driven simulator: flows, cells and failures through the controller's own code."""
