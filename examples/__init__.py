"""Demo job handlers for the quick start, the tests and the benchmarks."""
