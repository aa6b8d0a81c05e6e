"""Where a flow's state lives: the cell ring and mirroring profiles."""
