"""Speed benchmarks: ``make bench`` (python -m benchmarks). Never run by the tests."""
