"""`make bench`: measured figures, each a ratio or rate taken side by side in one run.

Results go to build/bench/<name>.json and a printed table. Run one with
`python -m benchmarks NAME [NAME ...]`; names: see benchmarks.__main__.BENCHMARKS.
"""
