"""The `selfy` command line: one module per subcommand."""
