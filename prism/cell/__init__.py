"""The exception-path cell: connection tracking (pure), raw packet I/O, and the cell process."""
