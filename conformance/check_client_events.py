#!/usr/bin/env python3
"""Validates every client event the bridge sent in the end-to-end tests
against the official `openai` package's pydantic models.

The tests write one JSON event per line to target/conformance/<test>.<dialect>.jsonl.
Dialects and the SDK unions that check them:
  ga    Realtime GA (and Azure's GA)  openai.types.realtime.RealtimeClientEvent
  beta  Realtime beta                 openai.types.beta.realtime.RealtimeClientEvent
  live  GPT-Live (OpenAI and Azure)   openai.types.live.ClientEvent
Each event is validated with the union member its `type` names (the SDK's
`PropertyInfo(discriminator=...)` is not a pydantic discriminator, so a plain
union would report every member's errors); an unknown `type` is an error.

The models allow extra keys, so a misspelt key would pass silently: the walk
below fails on any non-empty `model_extra` anywhere in the parsed model
(PROTOCOLS.md §2.6). The live response models also relax fields the request
side requires (`delegation_id` is "required, nullable" but defaults to None),
so live events are also validated with the SDK's request TypedDicts
(openai.types.live.client_event_param.ClientEventParam), which keep them
`Required[Optional[str]]`.

conformance/live_examples.jsonl holds one correct example of every GPT-Live
client event the bridge sends; the self-test asserts they all validate.

Exits non-zero on any invalid event, and also when a dialect has no events at
all, so that a test change cannot turn this check into one that cannot fail.
"""
import json
import pathlib
import sys
import typing

import pydantic
from openai.types.realtime import RealtimeClientEvent as GaEvent
from openai.types.beta.realtime import RealtimeClientEvent as BetaEvent
from openai.types.live import ClientEvent as LiveEvent
from openai.types.live.client_event_param import ClientEventParam as LiveEventParam

LIVE_EXAMPLES = pathlib.Path(__file__).with_name("live_examples.jsonl")
# The GPT-Live client events the bridge sends; live_examples.jsonl must show each.
LIVE_SENT = {
    "session.start",
    "session.input_audio.append",
    "session.commentary.append",
    "session.instructions.append",
    "response.item.create",
    "response.create",
    "session.close",
}


def members(union):
    """The member types of an (optionally Annotated) Union."""
    if typing.get_origin(union) is typing.Annotated:
        union = typing.get_args(union)[0]
    return typing.get_args(union)


def type_literal(member):
    """The `type` literal of a pydantic model or a TypedDict."""
    if isinstance(member, type) and issubclass(member, pydantic.BaseModel):
        hint = member.model_fields["type"].annotation
    else:
        hint = typing.get_type_hints(member, include_extras=True)["type"]
    while typing.get_origin(hint) is not typing.Literal:  # Required[...], Annotated[...]
        hint = typing.get_args(hint)[0]
    (literal,) = typing.get_args(hint)
    return literal


def adapters(union):
    """{event type: TypeAdapter of the union member with that type}."""
    table = {}
    for member in members(union):
        literal = type_literal(member)
        assert literal not in table, f"two members of {union} have type {literal!r}"
        table[literal] = pydantic.TypeAdapter(member)
    return table


MODELS = {
    "ga": adapters(GaEvent),
    "beta": adapters(BetaEvent),
    "live": adapters(LiveEvent),
}
# Request-side TypedDicts, for required keys the response models relax.
PARAMS = {
    "live": adapters(LiveEventParam),
}


def extras(obj, path="$"):
    """Yields (path, extra keys) for every pydantic model with unknown keys."""
    if isinstance(obj, pydantic.BaseModel):
        extra = getattr(obj, "model_extra", None) or {}
        if extra:
            yield path, sorted(extra)
        for name in type(obj).model_fields:
            yield from extras(getattr(obj, name), f"{path}.{name}")
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            yield from extras(item, f"{path}[{i}]")
    elif isinstance(obj, dict):
        for key, item in obj.items():
            yield from extras(item, f"{path}.{key}")


def errors(e, what):
    found = [f"{what} $.{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
    if len(found) > 3:
        found = found[:3] + [f"... {len(found) - 3} more"]
    return found


def check(event, dialect):
    """Returns the problems with one event (empty if it is valid)."""
    if not isinstance(event, dict):
        return [f"not a JSON object: {event!r}"]
    kind = event.get("type")
    adapter = MODELS[dialect].get(kind)
    if adapter is None:
        return [f"unknown {dialect} client event type {kind!r}"]
    try:
        model = adapter.validate_python(event)
    except pydantic.ValidationError as e:
        return errors(e, "model")
    problems = [f"unknown keys {keys} at {path}" for path, keys in extras(model)]
    param = PARAMS.get(dialect, {}).get(kind)
    if param is not None:
        try:
            param.validate_python(event)
        except pydantic.ValidationError as e:
            problems += errors(e, "request TypedDict")
    return problems


def self_test():
    """The checker must reject what it is meant to reject, and accept the
    documented GPT-Live examples."""
    start = {"model": "gpt-live-1", "audio": {"format": {"type": "audio/pcmu", "rate": 8000}}}
    bad = [
        ("ga", {"type": "input_audio_buffer.append", "audio": "AAAA", "audoi": 1}),
        ("ga", {"type": "conversation.item.truncate", "item_id": "i", "content_index": 0, "audio_end_ms": "x"}),
        ("ga", {"type": "response.cancle"}),
        ("ga", {"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"formatt": {}}}}}),
        ("beta", {"type": "session.update", "session": {"input_audio_fromat": "pcm16"}}),
        # GPT-Live: a misspelt key, a wrong type, an unknown type, a missing
        # required-nullable key, Realtime-only keys, bad formats.
        ("live", {"type": "session.start", "session": {"model": "gpt-live-1", "audio": {"formatt": {"type": "audio/pcmu", "rate": 8000}}}}),
        ("live", {"type": "session.input_audio.append", "audio": 12345}),
        ("live", {"type": "session.begin", "session": start}),
        ("live", {"type": "input_audio_buffer.append", "audio": "AAAA"}),
        ("live", {"type": "session.commentary.append", "content": "Greet the caller."}),
        ("live", {"type": "session.instructions.append", "content": "Be brief."}),
        ("live", {"type": "session.start", "session": {**start, "turn_detection": {"type": "server_vad"}}}),
        ("live", {"type": "session.start", "session": {**start, "type": "realtime"}}),
        ("live", {"type": "session.start", "session": {"audio": start["audio"]}}),
        ("live", {"type": "session.start", "session": {"model": "gpt-live-1", "audio": {"format": {"type": "audio/pcmu"}}}}),
        ("live", {"type": "session.start", "session": {"model": "gpt-live-1", "audio": {"format": {"type": "audio/pcm", "rate": 8000}}}}),
        ("live", {"type": "session.start", "session": {**start, "delegation": {"type": "responses", "responses": {"model": "gpt-5.5", "tools": [{"type": "function", "name": "f", "paramters": {}}]}}}}),
        ("live", {"type": "session.start", "session": {**start, "input": [{"role": "user", "content": [{"type": "input_text", "txt": "hi"}]}]}}),
        ("live", {"type": "response.item.create", "item": {"type": "function_call_output", "call_id": "c", "outptu": "x"}}),
        ("live", {"type": "response.item.create", "item": {"type": "function_call_output", "call_idd": "c", "output": "x"}}),
        ("live", {"type": "response.create", "response": {}}),
        ("live", {"type": "session.close", "reason": "done"}),
    ]
    for dialect, event in bad:
        if not check(event, dialect):
            sys.exit(f"self-test: checker accepted a bad {dialect} event: {event}")
    seen = set()
    for n, line in enumerate(LIVE_EXAMPLES.read_text().splitlines(), 1):
        if not line.strip():
            continue
        event = json.loads(line)
        problems = check(event, "live")
        if problems:
            sys.exit(f"self-test: {LIVE_EXAMPLES.name}:{n} {event.get('type')}: {problems}")
        seen.add(event.get("type"))
    if LIVE_SENT - seen:
        sys.exit(f"self-test: {LIVE_EXAMPLES.name} lacks {sorted(LIVE_SENT - seen)}")


def main():
    self_test()
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/conformance")
    files = sorted(root.glob("*.jsonl"))
    counts = {dialect: 0 for dialect in MODELS}
    types = {dialect: set() for dialect in MODELS}
    failures = []
    for f in files:
        dialect = f.suffixes[-2].lstrip(".") if len(f.suffixes) >= 2 else ""
        if dialect not in MODELS:
            failures.append(f"{f.name}: unknown dialect tag {dialect!r}")
            continue
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if not line.strip():
                continue
            event = json.loads(line)
            problems = check(event, dialect)
            counts[dialect] += 1
            types[dialect].add(event.get("type") if isinstance(event, dict) else None)
            failures += [f"{f.name}:{n} {event.get('type') if isinstance(event, dict) else '?'}: {p}" for p in problems]
    for dialect, n in counts.items():
        if n == 0:
            failures.append(f"no {dialect} client events found under {root}: run the tests first")
    for dialect in counts:
        print(f"{dialect}: {counts[dialect]} events, types: {', '.join(sorted(map(str, types[dialect])))}")
    if failures:
        print("\n".join(failures[:50]), file=sys.stderr)
        sys.exit(1)
    print("client event conformance: all events valid")


if __name__ == "__main__":
    main()
