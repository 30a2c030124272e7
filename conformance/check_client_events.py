#!/usr/bin/env python3
"""Validates every Realtime client event the bridge sent in the end-to-end
tests against the official `openai` package's pydantic models.

The tests write one JSON event per line to target/conformance/<test>.<dialect>.jsonl
(dialect: ga or beta). GA events are checked with
openai.types.realtime.RealtimeClientEvent, beta ones with
openai.types.beta.realtime.RealtimeClientEvent. The models allow extra keys,
so a misspelt key would pass silently: the walk below fails on any non-empty
`model_extra` anywhere in the parsed model (PROTOCOLS.md §2.6).

Exits non-zero on any invalid event, and also when a dialect has no events at
all, so that a test change cannot turn this check into one that cannot fail.
"""
import json
import pathlib
import sys

import pydantic
from openai.types.realtime import RealtimeClientEvent as GaEvent
from openai.types.beta.realtime import RealtimeClientEvent as BetaEvent

ADAPTERS = {
    "ga": pydantic.TypeAdapter(GaEvent),
    "beta": pydantic.TypeAdapter(BetaEvent),
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


def check(event, dialect):
    model = ADAPTERS[dialect].validate_python(event)
    problems = [f"unknown keys {keys} at {path}" for path, keys in extras(model)]
    return problems


def self_test():
    """The checker must reject what it is meant to reject."""
    bad = [
        ("ga", {"type": "input_audio_buffer.append", "audio": "AAAA", "audoi": 1}),
        ("ga", {"type": "conversation.item.truncate", "item_id": "i", "content_index": 0, "audio_end_ms": "x"}),
        ("ga", {"type": "response.cancle"}),
        ("ga", {"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"formatt": {}}}}}),
        ("beta", {"type": "session.update", "session": {"input_audio_fromat": "pcm16"}}),
    ]
    for dialect, event in bad:
        try:
            if not check(event, dialect):
                sys.exit(f"self-test: checker accepted a bad event: {event}")
        except pydantic.ValidationError:
            pass


def main():
    self_test()
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/conformance")
    files = sorted(root.glob("*.jsonl"))
    counts = {"ga": 0, "beta": 0}
    types = {"ga": set(), "beta": set()}
    failures = []
    for f in files:
        dialect = f.suffixes[-2].lstrip(".") if len(f.suffixes) >= 2 else ""
        if dialect not in ADAPTERS:
            failures.append(f"{f.name}: unknown dialect tag {dialect!r}")
            continue
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if not line.strip():
                continue
            event = json.loads(line)
            try:
                problems = check(event, dialect)
            except pydantic.ValidationError as e:
                problems = [str(e).splitlines()[0]]
            counts[dialect] += 1
            types[dialect].add(event.get("type"))
            failures += [f"{f.name}:{n} {event.get('type')}: {p}" for p in problems]
    for dialect, n in counts.items():
        if n == 0:
            failures.append(f"no {dialect} client events found under {root}: run the tests first")
    for dialect in counts:
        print(f"{dialect}: {counts[dialect]} events, types: {', '.join(sorted(types[dialect]))}")
    if failures:
        print("\n".join(failures[:50]), file=sys.stderr)
        sys.exit(1)
    print("client event conformance: all events valid")


if __name__ == "__main__":
    main()
