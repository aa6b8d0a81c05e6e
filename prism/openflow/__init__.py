"""OpenFlow 1.3 as the core describes it: change descriptions and the pipeline's constants."""
