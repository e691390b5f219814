"""`python -m moe_flan.convert ...`: see moe_flan/convert/cli.py."""
import sys

from moe_flan.convert import cli

if __name__ == '__main__':
  sys.exit(cli.main())
