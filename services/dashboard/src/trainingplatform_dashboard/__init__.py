"""The training platform's live web dashboard (`tp-dashboard`).

A Starlette app served by uvicorn and a gRPC client of the backend's JobsService only: it serves the pages, a JSON
API and Server-Sent Events (one backend subscription per watched job, fanned out to every open tab).
"""

from trainingplatform_dashboard.app import create_app
from trainingplatform_dashboard.settings import Settings, load

__all__ = ["Settings", "create_app", "load"]
