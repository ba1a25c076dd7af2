"""Run records -> tables and plots, published reference rows, speed benchmarks, the CLI."""
