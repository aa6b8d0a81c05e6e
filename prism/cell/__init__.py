"""The exception-path cell: connection tracking (pure), raw packet I/O, the cell process and its State Mirroring Module."""
