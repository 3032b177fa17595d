"""The `omnivox` command line: `main.py` builds the parser; one module per command group, each exposing
`register(subparsers)`."""
