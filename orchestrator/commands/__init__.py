"""One module per `orch` verb: argument parsing and calling the layers below."""
