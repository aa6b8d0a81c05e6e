"""Telemetry: flow records and switch statistics, as rows and crash-safe Parquet files."""
