"""``prism trace``: captures and Argus binetflow files turned into flow records."""
