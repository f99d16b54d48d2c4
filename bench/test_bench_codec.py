"""Codec micro-benchmarks: compiled vs pure twin vs the reference JSON semantics.

Each round encodes a batch of 64 RitualEvent-shaped events into one frame and
decodes it back to structs.  Run: ``pytest bench/ --benchmark-only``.
Per-event cost = mean / 64.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime
from typing import Any

import msgspec
import pytest

from spiralfast import schema
from spiralfast.wire import _codec_py

try:
    from spiralfast.wire import _codec as _codec_c
except ImportError:  # pragma: no cover
    _codec_c = None  # type: ignore[assignment]

BATCH = 64
_DECODE_EVENT = msgspec.msgpack.Decoder(schema.Event).decode
NODE = str(uuid.uuid4())
DATA = {"agent_id": "agent-7", "message": "hello", "target_agent": None}


def _events() -> list[schema.Event]:
    now = time.time()
    return [schema.Event(f"{NODE[:8]}-{i}", "agent_message", NODE, now, DATA) for i in range(BATCH)]


def _run_frame(impl: Any, events: list[schema.Event]) -> Any:
    w = impl.FrameWriter()
    et = schema.event_type_id("agent_message")
    for ev in events:
        w.add(schema.KIND_EVENT, et, b"", ev.event_id, ev)
    frame = w.finish()
    return impl.decode_payloads(frame, _DECODE_EVENT)


IMPLS = [pytest.param(_codec_py, id="pure")]
if _codec_c is not None:
    IMPLS.insert(0, pytest.param(_codec_c, id="compiled"))


@pytest.mark.benchmark(group="codec-64")
@pytest.mark.parametrize("impl", IMPLS)
def test_frame_encode_decode(benchmark: Any, impl: Any) -> None:
    events = _events()
    out = benchmark(_run_frame, impl, events)
    assert out == events


@pytest.mark.benchmark(group="codec-64")
def test_msgspec_floor(benchmark: Any) -> None:
    """msgspec alone, one encode+decode per event, no framing: the floor."""
    events = _events()
    enc = msgspec.msgpack.Encoder()
    dec = msgspec.msgpack.Decoder(schema.Event)

    def run() -> list[schema.Event]:
        return [dec.decode(enc.encode(e)) for e in events]

    assert benchmark(run) == events


@pytest.mark.benchmark(group="codec-64")
def test_reference_json(benchmark: Any) -> None:
    """The old library's semantics: dict envelope, ISO timestamp, json.dumps/loads."""

    def run() -> list[dict[str, Any]]:
        out = []
        for i in range(BATCH):
            msg = {
                "type": "agent_message",
                "source_node": NODE,
                "timestamp": datetime.now().isoformat(),
                "data": DATA,
                "event_id": f"{NODE[:8]}-{i}",
            }
            d = json.loads(json.dumps(msg))
            d["timestamp"] = datetime.fromisoformat(d["timestamp"])
            out.append(d)
        return out

    out = benchmark(run)
    assert len(out) == BATCH and all(d["data"] == DATA and d["type"] == "agent_message" for d in out)
