"""`python -m moe_flan.aot --gin_file=... --topology=v5p:2x2x1`: see moe_flan.aot.cli."""
from moe_flan.aot import cli

if __name__ == '__main__':
  cli.console_main()
