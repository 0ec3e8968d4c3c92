"""The review app over HTTP (uvicorn on 127.0.0.1): decisions appended and fsynced, resume, whole-group
corrections, progress, images only by queue index (no client path ever opened), token and Host checks."""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from review_testkit import TWO_HEADS, get_json, make_queue, post_json, read_lines, served, state_for

from crisis_tool.review.app import TOKEN_COOKIE, create_app
from crisis_tool.review.server import LOOPBACK_NAMES
from crisis_tool.review.store import CorrectionStore


def raw_get(base: str, target: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    """GET `target` sent byte for byte (no client-side normalisation of '..' or %2e)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("GET", target, skip_host="host" in {k.lower() for k in headers or {}}, skip_accept_encoding=True)
    for key, value in (headers or {}).items():
        conn.putheader(key, value)
    conn.endheaders()
    res = conn.getresponse()
    body = res.read()
    conn.close()
    return res.status, body, {k.lower(): v for k, v in res.getheaders()}


@pytest.fixture()
def queue(tmp_path: Path) -> Path:
    return make_queue(tmp_path / "q", TWO_HEADS, count=6)


def test_decisions_are_appended_one_line_each_and_the_page_resumes(queue: Path, tmp_path: Path) -> None:
    corrections = tmp_path / "corrections.jsonl"
    with served(create_app(state_for(queue, corrections, reviewer="ana"))) as url:
        state = get_json(f"{url}/api/state")
        assert state["tasks"] == ["informative", "damage"] and state["progress"]["position"] == 0
        item = get_json(f"{url}/api/item/0")
        assert item["id"] == "p0" and item["heads"]["informative"]["label"] == "not_informative"
        assert "image" not in item and item["has_image"]  # no server path reaches the page
        post_json(f"{url}/api/decision", {"index": 0, "task": "informative", "label": "informative"})
        res = post_json(f"{url}/api/decision", {"index": 0, "task": "damage", "label": "mild_damage"})
        assert res["item"]["decisions"] == {"informative": {"label": "informative", "action": "correct"},
                                            "damage": {"label": "mild_damage", "action": "accept"}}
        progress = res["progress"]
        assert (progress["reviewed"], progress["remaining"], progress["position"]) == (1, 5, 1)
        assert progress["agreement"]["informative"] == {"decided": 1, "agree": 0, "rate": 0.0}
        assert progress["agreement"]["damage"] == {"decided": 1, "agree": 1, "rate": 1.0}
        assert progress["histogram"]["reviewed"] == [0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
        assert sum(progress["histogram"]["all"]) == 6
        post_json(f"{url}/api/decision", {"index": 1, "task": "damage", "label": "little_or_no_damage"})
        assert len(read_lines(corrections)) == 3  # on disk before the next request
    lines = read_lines(corrections)
    assert [(x["id"], x["task"], x["label"], x["previous"], x["action"]) for x in lines] == [
        ("p0", "informative", "informative", "not_informative", "correct"),
        ("p0", "damage", "mild_damage", "mild_damage", "accept"),
        ("p1", "damage", "little_or_no_damage", "severe_damage", "correct")]
    assert all(x["reviewer"] == "ana" and x["time"].endswith("Z") for x in lines)
    before = corrections.read_bytes()
    with served(create_app(state_for(queue, corrections))) as url:  # reopened: resumes at p1 (one head open)
        state = get_json(f"{url}/api/state")
        assert state["progress"]["position"] == 1 and state["progress"]["reviewed"] == 1
        assert get_json(f"{url}/api/item/1")["decisions"] == {"damage": {"label": "little_or_no_damage",
                                                                         "action": "correct"}}
    assert corrections.read_bytes() == before  # reopening never rewrites


def test_every_line_is_flushed_and_fsynced_before_the_answer(queue: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    corrections = tmp_path / "c.jsonl"

    def spy(fd: int) -> None:
        synced.append(len(corrections.read_bytes().splitlines()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    store = CorrectionStore(corrections)
    for label in ("informative", "not_informative"):
        store.append([store.decide("p0", "informative", label, "not_informative")])
    store.close()
    assert synced[-2:] == [1, 2]  # each line was in the file when its fsync ran


def test_a_group_correction_applies_to_every_member(queue: Path, tmp_path: Path) -> None:
    corrections = tmp_path / "c.jsonl"
    with served(create_app(state_for(queue, corrections))) as url:
        res = post_json(f"{url}/api/decision", {"index": 0, "task": "damage", "label": "severe_damage",
                                                "group": True})
        assert res["written"] == 3
        post_json(f"{url}/api/decision", {"index": 0, "task": "informative", "label": "informative"})
    lines = read_lines(corrections)
    assert [(x["id"], x["label"], x.get("via")) for x in lines] == [
        ("p0", "severe_damage", None), ("dup0a", "severe_damage", "p0"), ("dup0b", "severe_damage", "p0"),
        ("p0", "informative", None)]


@pytest.mark.parametrize(("body", "status"), [
    ({"index": 99, "task": "damage", "label": "mild_damage"}, 404),
    ({"index": True, "task": "damage", "label": "mild_damage"}, 404),
    ({"index": 0, "task": "severity", "label": "mild_damage"}, 400),
    ({"index": 0, "task": "damage", "label": "informative"}, 400),
    ([1, 2], 400),
])
def test_bad_decisions_are_refused_and_write_nothing(queue: Path, tmp_path: Path, body: object, status: int) -> None:
    corrections = tmp_path / "c.jsonl"
    with served(create_app(state_for(queue, corrections))) as url:
        with pytest.raises(urllib.error.HTTPError) as info:
            post_json(f"{url}/api/decision", body)
        assert info.value.code == status
        req = urllib.request.Request(f"{url}/api/decision", method="POST", data=b"{}",
                                     headers={"Content-Type": "text/plain"})  # a cross-site form cannot send JSON
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=30)
        assert info.value.code == 415
    assert corrections.read_bytes() == b""


SECRET = b"root:x:0:0"


@pytest.mark.parametrize("target", [
    "/image?path=/etc/passwd", "/image/?path=/etc/passwd", "/image/../../../../etc/passwd",
    "/image/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/image/..%2f..%2f..%2fetc%2fpasswd", "/image//etc/passwd",
    "/image/0/../../../../etc/passwd", "/image/-1", "/image/6", "/image/99999999999999999999", "/image/0x1",
    "/image/0/member/2", "/image/0/member/-1", "/image/0/member/%2e%2e%2fpasswd", "/image/1/member/0",
    "/static/../../../../etc/passwd", "/static/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/static/queue.py",
    "/static/index.html/../../store.py", "/etc/passwd", "/api/item/99", "/image/%00",
])
def test_no_client_path_is_ever_opened(queue: Path, tmp_path: Path, target: str) -> None:
    with served(create_app(state_for(queue, tmp_path / "c.jsonl"))) as url:
        status, body, _ = raw_get(url, target)
    assert status in (400, 404, 405), (target, status)
    assert SECRET not in body and b"import" not in body


def test_images_are_served_by_queue_index_only(queue: Path, tmp_path: Path) -> None:
    images = queue.parent / "images"
    with served(create_app(state_for(queue, tmp_path / "c.jsonl"))) as url:
        status, body, headers = raw_get(url, "/image/2?path=/etc/passwd")
        assert status == 200 and body == (images / "post2.jpg").read_bytes()  # the query is ignored
        assert headers["content-type"] == "image/jpeg" and headers["x-content-type-options"] == "nosniff"
        status, body, _ = raw_get(url, "/image/0/member/0")
        assert status == 200 and body == (images / "post6.jpg").read_bytes()
        assert raw_get(url, "/image/0/member/1")[0] == 404  # dup0b has no image
        (images / "post3.jpg").unlink()
        os.mkfifo(images / "post3.jpg")  # a FIFO named by the queue neither hangs nor serves
        assert raw_get(url, "/image/3")[0] == 404
        (images / "post4.jpg").write_text("root:x:0:0:root:/root:/bin/bash\n")  # not an image: not served
        status, body, _ = raw_get(url, "/image/4")
        assert status == 415 and SECRET not in body


def test_page_and_assets_are_served_from_the_package(queue: Path, tmp_path: Path) -> None:
    with served(create_app(state_for(queue, tmp_path / "c.jsonl"))) as url:
        status, page, headers = raw_get(url, "/")
        assert status == 200 and b'src="/static/app.js"' in page and b"http" not in page.replace(b"http-", b"")
        assert "script-src 'self'" in headers["content-security-policy"]
        for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
            status, body, headers = raw_get(url, f"/static/{name}")
            assert status == 200 and headers["content-type"].startswith(kind) and len(body) > 500
            assert b"//cdn" not in body and b"https://" not in body  # works offline


def test_the_token_is_required_by_header_or_by_the_cookie_set_once(queue: Path, tmp_path: Path) -> None:
    app = create_app(state_for(queue, tmp_path / "c.jsonl"), token="s3cret")
    with served(app) as url:
        for target in ("/", "/api/state", "/image/0", "/static/app.js"):
            assert raw_get(url, target)[0] == 401
        assert raw_get(url, "/api/state", {"Authorization": "Bearer wrong"})[0] == 401
        assert raw_get(url, "/api/state", {"Cookie": f"{TOKEN_COOKIE}=s3cre"})[0] == 401
        assert raw_get(url, "/api/state", {"Authorization": "Bearer s3cret"})[0] == 200
        assert raw_get(url, "/?token=nope")[0] == 401
        status, _, headers = raw_get(url, "/?token=s3cret")
        assert status == 303 and headers["location"] == "/"  # the token leaves the address bar
        cookie = headers["set-cookie"]
        assert cookie.startswith(f"{TOKEN_COOKIE}=s3cret") and "httponly" in cookie.lower()
        assert "samesite=strict" in cookie.lower()
        assert raw_get(url, "/api/item/0", {"Cookie": f"{TOKEN_COOKIE}=s3cret"})[0] == 200


def test_a_foreign_host_header_is_refused_on_loopback(queue: Path, tmp_path: Path) -> None:
    app = create_app(state_for(queue, tmp_path / "c.jsonl"), allowed_hosts=LOOPBACK_NAMES)
    with served(app) as url:
        port = url.rsplit(":", 1)[1]
        assert raw_get(url, "/api/state")[0] == 200
        assert raw_get(url, "/api/state", {"Host": f"localhost:{port}"})[0] == 200
        assert raw_get(url, "/api/state", {"Host": f"evil.example:{port}"})[0] == 421  # DNS rebinding


def test_a_torn_last_line_is_cut_off_and_complete_lines_kept(tmp_path: Path) -> None:
    corrections = tmp_path / "c.jsonl"
    whole = json.dumps({"id": "p0", "task": "damage", "label": "mild_damage", "previous": "mild_damage",
                        "time": "2026-12-06T05:30:00Z", "action": "accept", "reviewer": None})
    corrections.write_text(whole + "\n" + '{"id": "p1", "task": "dam')
    with pytest.warns(UserWarning, match="unfinished last write"):
        store = CorrectionStore(corrections)
    assert list(store.latest) == [("p0", "damage")]
    store.append([store.decide("p1", "damage", "severe_damage", "mild_damage")])
    store.close()
    assert [x["id"] for x in read_lines(corrections)] == ["p0", "p1"]
    corrections.write_text(whole)  # a complete last line without its newline is kept and ended
    store = CorrectionStore(corrections)
    store.append([store.decide("p1", "damage", "severe_damage", "mild_damage")])
    store.close()
    assert [x["id"] for x in read_lines(corrections)] == ["p0", "p1"]
