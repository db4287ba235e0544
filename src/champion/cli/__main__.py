"""`python -m champion.cli`: the same as the `champion` command."""

from champion.cli import main

main()
