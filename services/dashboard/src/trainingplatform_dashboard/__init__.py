"""The training platform's live web dashboard (`tp-dashboard`).

A Starlette app served by uvicorn and a gRPC client of the backend's JobsService only: it serves the pages, a JSON
API and Server-Sent Events (one backend subscription per watched job, fanned out to every open tab).
"""

# First, before grpc is imported: gRPC's fork handlers off, as in every process of the platform (see the module).
import trainingplatform_sdk.grpc_env  # noqa: F401

from trainingplatform_dashboard.app import create_app
from trainingplatform_dashboard.settings import Settings, load

__all__ = ["Settings", "create_app", "load"]
