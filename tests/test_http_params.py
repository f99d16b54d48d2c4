"""Query parameters of ``/api/*`` on a real node: a value that cannot be honoured is a
400 with a JSON error naming the parameter, never silently replaced by a default
(issue 24, papercuts: ``/api/events?count=abc``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from urllib.parse import quote

import pytest

from spiralfast import MeshCore
from spiralfast.ops.http import API_PARAMS, EVENTS_MAX, MAX_QUERY_FIELDS

from .conftest import wait_for
from .test_metrics import cfg, get

pytestmark = pytest.mark.timeout(120)

TOKEN = "s3cret"


@pytest.fixture
async def node() -> AsyncIterator[MeshCore]:
    a = MeshCore(cfg("hp-open"))
    await a.start()
    try:
        yield a
    finally:
        await a.stop()


def base(node: MeshCore) -> str:
    return f"http://127.0.0.1:{node.config.websocket_port}"


async def bad(node: MeshCore, target: str, parameter: str, token: str | None = None) -> str:
    """``target`` is refused with 400 and a JSON error about ``parameter``; returns the message."""
    status, headers, body = await get(base(node) + target, token)
    assert status == 400, (target, status, body)
    assert headers["Content-Type"] == "application/json"
    err = json.loads(body)
    assert err["parameter"] == parameter, (target, err)
    assert err["path"] == target.partition("?")[0]
    assert parameter in err["error"], err
    return str(err["error"])


async def test_events_count_is_checked(node: MeshCore) -> None:
    a = node
    for i in range(5):
        await a.broadcast_event("x", {"i": i})
    await wait_for(lambda: sum(1 for e in a.recent_events if getattr(e, "event_type", None) == "x") >= 5)
    # the positive path: valid counts and types are honoured
    status, _, body = await get(base(a) + "/api/events?count=2&type=x")
    assert status == 200 and [e["data"]["i"] for e in json.loads(body)] == [3, 4]
    status, _, body = await get(base(a) + f"/api/events?count={EVENTS_MAX}&type=x,y")
    assert status == 200 and len(json.loads(body)) == 5
    status, _, body = await get(base(a) + "/api/events?count=1")
    assert status == 200 and len(json.loads(body)) == 1
    status, _, body = await get(base(a) + "/api/events")  # no count: the default
    assert status == 200 and len([e for e in json.loads(body) if e["type"] == "x"]) == 5

    # what cannot be honoured is refused, saying what is accepted
    msg = await bad(a, "/api/events?count=abc", "count")
    assert "'abc'" in msg and f"1 to {EVENTS_MAX}" in msg
    for value in ("0", "-1", str(EVENTS_MAX + 1), "99999999999", "", "1.5", "1e3", "+5", " 5x", "0x10", "٣"):
        msg = await bad(a, "/api/events?count=" + quote(value), "count")
        assert f"1 to {EVENTS_MAX}" in msg, (value, msg)
    assert "more than once" in await bad(a, "/api/events?count=1&count=2", "count")
    await bad(a, "/api/events?type=", "type")
    await bad(a, "/api/events?type=,", "type")
    await bad(a, "/api/events?type=x&type=", "type")
    # a typo is refused rather than ignored (which would answer the default count)
    msg = await bad(a, "/api/events?cout=5", "cout")
    assert "count" in msg and "type" in msg
    await bad(a, "/api/events?count", "count")  # a bare name is an empty value
    # a flood of parameters is refused as such, not failed as an internal error
    status, _, body = await get(base(a) + "/api/events?" + "&".join(f"type=t{i}" for i in range(MAX_QUERY_FIELDS + 1)))
    assert status == 400 and str(MAX_QUERY_FIELDS) in json.loads(body)["error"]
    status, _, body = await get(base(a) + "/api/events?" + "&".join(f"type=t{i}" for i in range(MAX_QUERY_FIELDS)))
    assert status == 200 and json.loads(body) == []
    # nothing was lost: a good query still answers in full
    status, _, body = await get(base(a) + "/api/events?count=5&type=x")
    assert status == 200 and [e["data"]["i"] for e in json.loads(body)] == [0, 1, 2, 3, 4]


async def test_other_api_paths_take_no_parameters(node: MeshCore) -> None:
    a = node
    assert set(API_PARAMS) == {"/api/status", "/api/nodes", "/api/events", "/api/topology", "/api/snapshot"}
    for path, accepted in API_PARAMS.items():
        status, _, body = await get(base(a) + path)
        assert status == 200, (path, body)
        if accepted:
            continue
        msg = await bad(a, path + "?verbose=1", "verbose")
        assert "no query parameters" in msg
        await bad(a, path + "?count=5", "count")
    # the dashboard's static files and /health do not care about a query
    assert (await get(base(a) + "/?x=1"))[0] == 200
    assert (await get(base(a) + "/health?x=1"))[0] == 200


async def test_a_bad_query_without_the_token_is_401() -> None:
    """The token is checked first: a caller without it learns nothing about the API."""
    a = MeshCore(cfg("hp-locked", auth_token=TOKEN))
    await a.start()
    try:
        status, _, _ = await get(base(a) + "/api/events?count=5", TOKEN)
        assert status == 200
        assert (await get(base(a) + "/api/events?count=abc"))[0] == 401
        assert (await get(base(a) + "/api/status?x=1", "wrong"))[0] == 401
        await bad(a, "/api/events?count=abc", "count", TOKEN)
    finally:
        await a.stop()
