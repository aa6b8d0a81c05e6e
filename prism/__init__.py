"""PRISM: predictive replication of flow state with packet mirroring.

The pure core: it decides, it never talks to a switch. Nothing in this package
imports ryu, eventlet or mininet (``tests/unit/test_purity.py`` enforces it).
"""

__version__ = "0.1.0"
