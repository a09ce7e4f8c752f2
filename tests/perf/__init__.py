"""The benchmark suite: ``make bench`` or ``python -m tests.perf [--quick] [--only NAME]``.

Each scenario starts what it needs on 127.0.0.1 (filesvc and its baselines),
runs bounded loads against all of them in the same run, stops everything it
started, and reports medians with min–max and the server's peak RSS. Nothing
here is collected by pytest: no module is named ``test_*``.
"""
