"""The management network: its datagrams, their authentication, the controller's generation."""
