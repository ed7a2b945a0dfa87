"""distdl-run: start the workers of a distdl job, watch them, stop them all when one fails, restart from a checkpoint.

The launcher talks to the workers only through the environment contract of
DESIGN.md and their exit codes, and imports nothing of the engine, so it starts at
once.
"""
