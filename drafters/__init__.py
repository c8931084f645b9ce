"""The drafters and the early-exit head shipped for the embedded default target (package data: each folder is a
model; orchestration/factory.py finds them next to the installed package)."""
