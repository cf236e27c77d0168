"""The training platform's live web dashboard (`tp-dashboard`).

A Starlette app served by uvicorn and a gRPC client of the backend's JobsService only: it serves the pages, a JSON
API and Server-Sent Events (one backend subscription per watched job, fanned out to every open tab).
"""

import os

# gRPC's fork handlers off before grpc is imported, as in the SDK (trainingplatform_sdk/__init__.py says why):
# a fork of this process, should anything fork it, must not run gRPC's fork handlers.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from trainingplatform_dashboard.app import create_app
from trainingplatform_dashboard.settings import Settings, load

__all__ = ["Settings", "create_app", "load"]
