"""`tp` (extra `cli`): the command line, the demo and the local stack it starts."""

from trainingplatform_sdk.cli.main import main

__all__ = ["main"]
