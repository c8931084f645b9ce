"""The wire: .proto files and their generated Python code (regenerate with `python -m mirrorspec.protos.generate`)."""
