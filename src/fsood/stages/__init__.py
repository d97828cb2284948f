"""One module per pipeline stage; each exposes ``run(params, ...)`` called by the CLI."""
