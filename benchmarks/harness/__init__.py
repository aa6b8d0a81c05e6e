"""Test-free pieces of the benchmarks: a scripted OpenFlow switch and ryu-manager as a subprocess."""
