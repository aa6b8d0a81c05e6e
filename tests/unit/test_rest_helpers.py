"""The REST API's checks without a server: tokens, bodies, and where the token comes from."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("ryu")
pytest.importorskip("prometheus_client")

from prism.config.load import RestConfig  # noqa: E402
from ryu_apps.rest_api import HttpError, check_authorization, configured_token, parse_body  # noqa: E402


def test_authorization_statuses():
    with pytest.raises(HttpError) as refused:
        check_authorization("Bearer x", "")
    assert refused.value.status == 403 and "PRISM_REST_TOKEN" in refused.value.message
    for header in (None, "", "Basic abc", "Bearer ", "Bearer wrong"):
        with pytest.raises(HttpError) as denied:
            check_authorization(header, "right")
        assert denied.value.status == 401 and "WWW-Authenticate" in denied.value.headers
    check_authorization("Bearer right", "right")
    check_authorization("bearer  right ", "right")


def test_bodies():
    assert parse_body(b"") == {} and parse_body(b" \n") == {}
    assert parse_body(b'{"reason": "upgrade"}') == {"reason": "upgrade"}
    for raw, status in ((b"{", 400), (b"\xff", 400), (b'"text"', 400), (b'{"x": 1}', 400),
                        (b'{"reason": 5}', 400), (b"{}" + b" " * 70000, 413)):  # fmt: skip
        with pytest.raises(HttpError) as bad:
            parse_body(raw)
        assert bad.value.status == status, raw[:20]


def test_token_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("PRISM_REST_TOKEN", "from-default-env")
    monkeypatch.setenv("OTHER_TOKEN", "from-named-env")
    assert configured_token(SimpleNamespace(rest=RestConfig())) == "from-default-env"
    assert configured_token(SimpleNamespace(rest=RestConfig(token_env="OTHER_TOKEN"))) == "from-named-env"
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    assert configured_token(SimpleNamespace(rest=RestConfig(token_file=str(token_file)))) == "from-file"
    with pytest.raises(HttpError) as unreadable:
        configured_token(SimpleNamespace(rest=RestConfig(token_file=str(tmp_path / "missing"))))
    assert unreadable.value.status == 403 and "rest.token_file" in unreadable.value.message
    monkeypatch.delenv("PRISM_REST_TOKEN")
    assert configured_token(SimpleNamespace(rest=RestConfig())) == ""
