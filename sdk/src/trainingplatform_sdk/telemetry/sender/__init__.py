"""The TrainingLogger's background sender: numbering, batching, the two streams, reconnects, spool and calls.

Modules, each with one job:
  - `buffer`: the tuples the caller appends (the only thing logging costs the caller's thread);
  - `validation`: the checks of a point or record before it is numbered;
  - `codec`: buffered points to stream requests and back, within the size limits;
  - `outbox`: one stream's numbering and uncommitted points, in memory and in the spool;
  - `calls`: unary calls and flushes, each behind the points logged before it;
  - `state`: the numbering and calls kept in the spool state;
  - `connection`: the connection's state, reconnect backoff, the final error, and one open stream;
  - `delivery`: the network side: the cursor, the streams, the calls;
  - `loop`: the thread that ties them together.
"""

from trainingplatform_sdk.telemetry.sender.buffer import CALL, FLUSH, LOG, METRIC, BufferItem
from trainingplatform_sdk.telemetry.sender.calls import FlushWaiter
from trainingplatform_sdk.telemetry.sender.loop import Sender

__all__ = ["CALL", "FLUSH", "LOG", "METRIC", "BufferItem", "FlushWaiter", "Sender"]
