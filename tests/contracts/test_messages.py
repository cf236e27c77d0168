"""Every message of every contract round-trips through the binary and the JSON encodings unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from trainingplatform.common.v1 import common_pb2
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2
from trainingplatform.trainer.v1 import trainer_pb2

MODULES = (common_pb2, telemetry_pb2, jobs_pb2, trainer_pb2)


def all_messages() -> list[type[Message]]:
    classes = []
    for module in MODULES:
        for name in module.DESCRIPTOR.message_types_by_name:
            classes.append(getattr(module, name))
    return classes


def fill(message: Message, depth: int = 0) -> None:
    """Sets every field (the first member of each oneof) to a non-default value."""
    descriptor: Descriptor = message.DESCRIPTOR
    if descriptor.full_name == "google.protobuf.Timestamp":
        message.FromSeconds(1_764_000_000)
        return
    if descriptor.full_name == "google.protobuf.Struct":
        message.update({"mosaic": 0.5, "tags": ["a", "b"], "nested": {"on": True}})
        return
    for field in descriptor.fields:
        oneof = field.containing_oneof
        synthetic = oneof is not None and oneof.name == f"_{field.name}"  # proto3 `optional`
        if oneof is not None and not synthetic and oneof.fields[0] is not field:
            continue  # setting a second member would clear the first
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            getattr(message, field.name)["key"] = 2.5 if value_field.type == FieldDescriptor.TYPE_DOUBLE else "v"
            continue
        repeated = field.is_repeated
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth > 4:
                continue
            target = getattr(message, field.name).add() if repeated else getattr(message, field.name)
            fill(target, depth + 1)
            continue
        value = sample(field)
        if repeated:
            getattr(message, field.name).append(value)
        else:
            setattr(message, field.name, value)


def sample(field: FieldDescriptor):
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values[-1].number
    if field.type == FieldDescriptor.TYPE_BOOL:
        return True
    if field.type == FieldDescriptor.TYPE_STRING:
        return f"{field.name}-é"
    if field.type == FieldDescriptor.TYPE_DOUBLE:
        return 0.125
    return 7


@pytest.mark.parametrize("cls", all_messages(), ids=lambda c: c.DESCRIPTOR.full_name)
def test_message_round_trips(cls: type[Message]):
    message = cls()
    fill(message)
    assert message.ByteSize() > 0 or not cls.DESCRIPTOR.fields
    assert cls.FromString(message.SerializeToString()) == message
    assert json_format.Parse(json_format.MessageToJson(message), cls()) == message


def test_every_element_is_documented():
    """The buf style asks for a comment on every service, RPC, message, enum, field and value."""
    undocumented = []
    for module in MODULES:
        path = module.DESCRIPTOR.name
        lines = (Path(__file__).parents[2] / "protos" / path).read_text().splitlines()
        for number, line in enumerate(lines):
            stripped = line.strip()
            declaration = stripped.startswith(("message ", "enum ", "service ", "rpc ", "oneof "))
            field = stripped.endswith(";") and "=" in stripped and not stripped.startswith(("option", "syntax"))
            if (declaration or field) and not lines[number - 1].strip().startswith("//"):
                undocumented.append(f"{path}:{number + 1}: {stripped}")
    assert not undocumented, "\n".join(undocumented)
