"""Speed and memory benchmarks (run as scripts, e.g. ``python -m benchmarks.bench_core``; not timed tests)."""
