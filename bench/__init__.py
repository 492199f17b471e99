"""optlab benchmarks: `python -m bench` measures our paths against the notebook's and prints one table."""
