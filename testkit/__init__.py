"""Test tools, not part of the product: a fake OpenFlow switch and well-formed test frames."""
