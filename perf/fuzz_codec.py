"""Feed mutated frames to the compiled decoders (decode_frame, decode_payloads and the
receive fast path's EventSink); report escapes, crashes and RSS growth.

Usage: python perf/fuzz_codec.py [COUNT] [SEED]      (default 1,000,000; not run in CI)
A crash kills the process (non-zero exit); an exception other than FrameError is
counted as an escape and printed.
"""

from __future__ import annotations

import random
import resource
import sys
import time
from collections import deque

from spiralfast import codec, schema
from spiralfast.errors import FrameError
from spiralfast.wire import _codec as impl  # the compiled decoder, on purpose
from spiralfast.wire import _fastpath
from spiralfast.wire.ring import Ring


class _Core:
    """Just enough of a MeshCore for the compiled EventSink."""

    def __init__(self) -> None:
        self.recent_events: deque[object] = deque(maxlen=100)
        self.observers: set[object] = set()
        self._spill: deque[object] = deque()
        self._inbox = Ring(16)
        self.event_handlers = {"x": [lambda env: None]}

    def _queue_envelope(self, env: object) -> None:
        pass

    def _handler_failed(self, h: object, env: object) -> None:
        pass


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def seeds(rng: random.Random) -> list[bytes]:
    out = []
    for n in (1, 2, 5, 17, 64):
        msgs = [
            (rng.randrange(256), rng.randrange(256), rng.randbytes(rng.randrange(40)),
             rng.randbytes(rng.randrange(40)), rng.randbytes(rng.randrange(300)))
            for _ in range(n)
        ]
        out.append(impl.encode_batch(msgs))
    # Well-formed event frames too, so mutations reach the payload decoder and the
    # receive path's envelope/handler code, not only the framing.
    for n in (1, 3, 16):
        w = impl.FrameWriter()
        for i in range(n):
            ev = schema.Event(f"e{i}", "x", "src", 1700000000.0 + i, {"i": i, "s": "é" * i}, None, 5, 1.0, {"m": i})
            w.add(schema.KIND_EVENT, 16, b"", f"e{i}-{rng.random()}", ev)
        out.append(w.finish())
    return out


def mutate(rng: random.Random, frame: bytes) -> bytes:
    b = bytearray(frame)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(6)
        pos = rng.randrange(len(b)) if b else 0
        if op == 0 and b:
            b[pos] = rng.randrange(256)
        elif op == 1 and b:
            b[pos] ^= 1 << rng.randrange(8)
        elif op == 2:
            del b[pos:pos + rng.randint(1, 16)]
        elif op == 3:
            b[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 4 and len(b) > 8:
            # Write an extreme length into a header-like position.
            b[pos:pos + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x80", b"\xff\xff\x00\x00"])
        else:
            del b[pos:]
    return bytes(b)


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    rng = random.Random(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    pool = seeds(rng)
    ok = errors = escapes = 0
    sink = _fastpath.EventSink(_Core(), b"me", _fastpath.Dedupe(1024))
    start = time.perf_counter()
    rss_start = None
    for i in range(count):
        frame = mutate(rng, rng.choice(pool))
        try:
            impl.decode_frame(frame)
            ok += 1
        except FrameError:
            errors += 1
        except Exception as exc:  # noqa: BLE001 - counting escapes is the point
            escapes += 1
            if escapes <= 10:
                print(f"ESCAPE decode_frame {type(exc).__name__}: {exc} frame={frame[:64].hex()}")
        try:
            impl.decode_payloads(frame, bytes)
            sink.receive(frame, True)
            for m in impl.decode_frame(frame):
                try:
                    codec.decode_payload(m.kind, m.payload)
                except FrameError:
                    pass
        except FrameError:
            pass
        except Exception as exc:  # noqa: BLE001
            escapes += 1
            if escapes <= 10:
                print(f"ESCAPE receive path {type(exc).__name__}: {exc} frame={frame[:64].hex()}")
        if i == 10_000:
            rss_start = rss_mib()
    elapsed = time.perf_counter() - start
    print(
        f"frames={count} decoded_ok={ok} frame_errors={errors} escaped={escapes} crashes=0 "
        f"rss_after_10k={rss_start:.1f}MiB rss_end={rss_mib():.1f}MiB elapsed={elapsed:.1f}s"
    )
    return 1 if escapes else 0


if __name__ == "__main__":
    sys.exit(main())
