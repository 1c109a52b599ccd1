"""One module per `qexport` subcommand: `add(subparsers)` declares it, `run(args)` executes it
by calling one library function. Add a command: a new module here plus one line in COMMANDS."""

COMMANDS = ["onnx", "validate", "embed", "serve"]
