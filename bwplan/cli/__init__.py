"""The command line: one module per command, each with add_arguments(parser) and
run(args) -> exit status. `main` is the only place that catches and prints errors."""
