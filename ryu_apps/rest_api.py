"""PRISM's REST API and Prometheus metrics, served by Ryu's WSGI server (on 127.0.0.1 by default).

Launch it beside the director (it reads the director app's state)::

    PRISM_CONFIG=examples/prism.yaml PRISM_REST_TOKEN=<secret> \\
        ryu-manager ryu_apps/mirroring_director.py ryu_apps/rest_api.py --wsapi-port 8080

Ryu's own default for ``--wsapi-host`` is 0.0.0.0; loading this module makes
it 127.0.0.1 unless the option is given. Endpoints (JSON unless said):

- ``GET /prism/v1/status``: counters over all switches and per switch, the last failover,
  management datagrams refused by reason (``mgmt_auth``: forged, replayed ...), OpenFlow
  errors by ``type/code`` (``switch_errors``; a refused addition also shows as
  ``flows_refused``/``groups_refused``/``flows_unprotected``), refused duplicate connections,
  the switches connected now (``switches_connected``, dpids in hex).
- ``GET /prism/v1/cells[?horizon_s=60]``: every cell's health, link, failure
  history, failure probability over the horizon, flows as primary/mirror.
- ``GET /prism/v1/cells/{id}``: one cell (404 if unknown).
- ``GET /prism/v1/profiles``: profile groups: cells, group ids, refcount, replicas confirmed.
- ``GET /prism/v1/flows[?cell=ID][&limit=N]``: flows (all, or those naming a cell).
- ``POST /prism/v1/cells/{id}/drain`` and ``/restore``: need
  ``Authorization: Bearer <token>``; optional JSON body ``{"reason": "..."}``.
- ``GET /prism/v1/model``: the model in service and its budget line (404 without
  a ``prediction`` section).
- ``POST /prism/v1/model/reload``: load ``prediction.model`` again and serve it
  (token and body as for drain): 200 with the new and previous model; 422 with
  the reason when the model is unusable, the previous one staying in service;
  409 without a ``prediction`` section.
- ``GET /metrics``: Prometheus text format.

Changes need a token: from the environment variable the configuration's
``rest.token_env`` names, the file ``rest.token_file`` names, else
``PRISM_REST_TOKEN``. With none, changes are refused (403) with a message
saying how to set one. Errors are ``{"error": "..."}`` with a 4xx status;
an unexpected exception is logged and answered 500 with a message, never a
traceback.
"""

from __future__ import annotations

import hmac
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from prometheus_client import CONTENT_TYPE_LATEST
from ryu import cfg
from ryu.app.wsgi import ControllerBase, Response, WSGIApplication, route
from ryu.base import app_manager

from prism.director.failover import UnknownCell
from prism.control.plane import MAX_FLOWS_LISTED
from ryu_apps.metrics import render_metrics

DEFAULT_REST_HOST = "127.0.0.1"
TOKEN_ENV = "PRISM_REST_TOKEN"
DIRECTOR_APP = "MirroringDirectorApp"
API_KEY = "prism_rest_api"
MAX_BODY_BYTES = 64 * 1024
BODY_KEYS = ("reason",)
NO_TOKEN = (
    "changes are disabled: no REST token is configured. Start ryu-manager with "
    f"{TOKEN_ENV}=<secret> in its environment (or name a variable with rest.token_env, or a file "
    "with rest.token_file, in the PRISM configuration), then send 'Authorization: Bearer <secret>'"
)
#: (path pattern, methods) of every endpoint, for 405 answers.
ENDPOINTS = (
    (re.compile(r"/prism/v1/(status|cells|profiles|flows)"), ("GET",)),
    (re.compile(r"/prism/v1/cells/[^/]+"), ("GET",)),
    (re.compile(r"/prism/v1/cells/[^/]+/(drain|restore)"), ("POST",)),
    (re.compile(r"/prism/v1/model"), ("GET",)),
    (re.compile(r"/prism/v1/model/reload"), ("POST",)),
)

# Loopback unless --wsapi-host says otherwise (ryu.app.wsgi registered the option).
cfg.CONF.set_default("wsapi_host", DEFAULT_REST_HOST)


class HttpError(Exception):
    """An answer other than 200: status, message, extra headers."""

    def __init__(self, status: int, message: str, headers: Optional[Dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def json_response(status: int, body: Any, headers: Optional[Dict[str, str]] = None) -> Response:
    """A JSON response."""
    response = Response(status=status, content_type="application/json", charset="utf-8",
                        body=json.dumps(body, indent=1, sort_keys=True).encode("utf-8"))  # fmt: skip
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def configured_token(config) -> str:
    """The REST token, or '' if none is configured.

    Raises:
        HttpError: 403 when the configured token file cannot be read.
    """
    rest = config.rest
    if rest.token_file:
        try:
            return Path(rest.token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise HttpError(403, f"changes are disabled: the token file {rest.token_file} "
                                 f"(rest.token_file) cannot be read: {error}") from None  # fmt: skip
    return os.environ.get(rest.token_env or TOKEN_ENV, "").strip()


def status_document(app, now: float) -> Dict[str, Any]:
    """The control plane's status plus ``mgmt_auth``: management datagrams refused by reason, and accepted."""
    status = app.control.status(now)
    channel = getattr(app, "channel", None)
    status["mgmt_auth"] = channel.auth_counts() if channel is not None else {}
    status["switch_errors"] = {f"{kind:#x}/{code:#x}": count
                               for (kind, code), count in sorted(getattr(app, "switch_errors", {}).items())}
    status["duplicate_connections"] = sum(getattr(app, "duplicate_connections", {}).values())
    status["switches_connected"] = sorted(f"{dp_id:016x}" for dp_id, datapath in getattr(app, "datapaths", {}).items()
                                          if getattr(datapath, "is_active", True))  # fmt: skip
    return status


def check_authorization(header: Optional[str], token: str) -> None:
    """Raise HttpError unless ``header`` is ``Bearer <token>`` (403 if no token is configured)."""
    if not token:
        raise HttpError(403, NO_TOKEN)
    scheme, _, given = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise HttpError(401, "this change needs 'Authorization: Bearer <token>'",
                        {"WWW-Authenticate": 'Bearer realm="prism"'})  # fmt: skip
    if not hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8")):
        raise HttpError(401, "invalid token", {"WWW-Authenticate": 'Bearer realm="prism", error="invalid_token"'})


def parse_body(raw: bytes) -> Dict[str, Any]:
    """An optional JSON object body with known keys (HttpError 400/413 otherwise)."""
    if len(raw) > MAX_BODY_BYTES:
        raise HttpError(413, f"body larger than {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise HttpError(400, f"malformed JSON body: {error}") from None
    if not isinstance(body, dict):
        raise HttpError(400, f"the body must be a JSON object, not {type(body).__name__}")
    unknown = sorted(set(body) - set(BODY_KEYS))
    if unknown:
        raise HttpError(400, f"unknown field(s) {', '.join(unknown)} (allowed: {', '.join(BODY_KEYS)})")
    if "reason" in body and not isinstance(body["reason"], str):
        raise HttpError(400, "reason must be a string")
    return body


def _positive_number(text: Optional[str], name: str, default: float) -> float:
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise HttpError(400, f"{name} must be a number, not {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise HttpError(400, f"{name} must be > 0, not {text}")
    return value


class PrismRestApi(app_manager.RyuApp):
    """Registers the REST controllers with Ryu's WSGI application."""

    _CONTEXTS = {"wsgi": WSGIApplication}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        wsgi = kwargs["wsgi"]
        wsgi.register(PrismRestController, {API_KEY: self})
        wsgi.register(PrismRestFallback, {API_KEY: self})  # after: it catches what nothing else matched

    def director(self):
        """The running MirroringDirectorApp (HttpError 503 if it is not loaded)."""
        app = app_manager.lookup_service_brick(DIRECTOR_APP)
        if app is None:
            raise HttpError(503, "the PRISM director is not loaded: run "
                                 "ryu-manager ryu_apps/mirroring_director.py ryu_apps/rest_api.py")  # fmt: skip
        return app

    def answer(self, request: str, produce: Callable[[Any], Tuple[int, Any]]) -> Response:
        """Run ``produce(director_app)`` -> (status, body); turn every failure into a JSON error."""
        try:
            status, body = produce(self.director())
            return json_response(status, body)
        except HttpError as error:
            return json_response(error.status, {"error": error.message}, error.headers)
        except UnknownCell as error:
            return json_response(404, {"error": str(error)})
        except Exception as error:  # never a traceback to the client
            self.logger.exception("REST %s failed", request)
            return json_response(500, {"error": f"internal error ({type(error).__name__}); "
                                                "the controller's log has the details"})  # fmt: skip

    def change(self, req, cell_id: str, action: str) -> Response:
        """A drain or restore, after the token and the body are checked."""

        def produce(app) -> Tuple[int, Any]:
            check_authorization(req.headers.get("Authorization"), configured_token(app.config))
            body = parse_body(req.body)
            app.control.cell(cell_id, app.clock.now())  # 404 before anything changes
            self.logger.warning("REST %s of cell %s%s", action, cell_id,
                                f" ({body['reason']})" if body.get("reason") else "")  # fmt: skip
            if action == "drain":
                app.drain_cell(cell_id)
            else:
                app.restore_cell(cell_id)
            return (202 if action == "drain" else 200), {
                "action": action, "cell": app.control.cell(cell_id, app.clock.now()),
            }  # fmt: skip

        return self.answer(f"POST {action} {cell_id}", produce)

    def reload_model(self, req) -> Response:
        """``POST /prism/v1/model/reload``, after the token and the body are checked."""

        def produce(app) -> Tuple[int, Any]:
            check_authorization(req.headers.get("Authorization"), configured_token(app.config))
            body = parse_body(req.body)
            self.logger.warning("REST model reload%s", f" ({body['reason']})" if body.get("reason") else "")
            if app.models is None or not app.models.directory:
                return 409, {"error": "no model is configured: add a prediction section (prediction.model) "
                                      "to the PRISM configuration and restart the controller"}  # fmt: skip
            from models.artifact import ModelError  # loaded already: the director serves a model

            try:
                return 200, app.reload_model()
            except ModelError as error:
                self.logger.warning("REST model reload refused: %s", error)
                return 422, {"error": f"the model in {app.models.directory} was not loaded: {error}; "
                                      "the previous model stays in service",
                             "model": app.models.status()}  # fmt: skip

        return self.answer("POST model reload", produce)


class PrismRestController(ControllerBase):
    """The endpoints (see the module docstring)."""

    def __init__(self, req, link, data, **config) -> None:
        super().__init__(req, link, data, **config)
        self.api: PrismRestApi = data[API_KEY]

    @route("prism", "/prism/v1/status", methods=["GET"])
    def get_status(self, req, **_kwargs):
        return self.api.answer("GET status", lambda app: (200, status_document(app, app.clock.now())))

    @route("prism", "/prism/v1/cluster", methods=["GET"])
    def get_cluster(self, req, **_kwargs):
        """This controller's part in a cluster (roles, etcd reachability, takeovers); null without etcd."""
        def produce(app):
            cluster = getattr(app, "cluster", None)
            counters = {f"{dp_id:016x}": d.counters.as_dict() for dp_id, d in app.directors.items()}
            return 200, {"cluster": None if cluster is None else cluster.status(), "directors": counters}

        return self.api.answer("GET cluster", produce)

    @route("prism", "/prism/v1/cells", methods=["GET"])
    def get_cells(self, req, **_kwargs):
        def produce(app):
            horizon = _positive_number(req.GET.get("horizon_s"), "horizon_s", 60.0)
            return 200, {"cells": app.control.cells(app.clock.now(), horizon)}

        return self.api.answer("GET cells", produce)

    @route("prism", "/prism/v1/cells/{cell_id}", methods=["GET"])
    def get_cell(self, req, cell_id, **_kwargs):
        def produce(app):
            horizon = _positive_number(req.GET.get("horizon_s"), "horizon_s", 60.0)
            return 200, app.control.cell(cell_id, app.clock.now(), horizon)

        return self.api.answer(f"GET cell {cell_id}", produce)

    @route("prism", "/prism/v1/profiles", methods=["GET"])
    def get_profiles(self, req, **_kwargs):
        return self.api.answer("GET profiles", lambda app: (200, {"profiles": app.control.profiles()}))

    @route("prism", "/prism/v1/flows", methods=["GET"])
    def get_flows(self, req, **_kwargs):
        def produce(app):
            limit = int(_positive_number(req.GET.get("limit"), "limit", MAX_FLOWS_LISTED))
            return 200, app.control.flows(req.GET.get("cell"), min(limit, MAX_FLOWS_LISTED))

        return self.api.answer("GET flows", produce)

    @route("prism", "/prism/v1/cells/{cell_id}/drain", methods=["POST"])
    def post_drain(self, req, cell_id, **_kwargs):
        return self.api.change(req, cell_id, "drain")

    @route("prism", "/prism/v1/cells/{cell_id}/restore", methods=["POST"])
    def post_restore(self, req, cell_id, **_kwargs):
        return self.api.change(req, cell_id, "restore")

    @route("prism", "/prism/v1/model", methods=["GET"])
    def get_model(self, req, **_kwargs):
        def produce(app):
            if app.models is None:
                raise HttpError(404, "no model is configured (no prediction section): every flow gets "
                                     "default_replication_factor")  # fmt: skip
            return 200, app.models.status()

        return self.api.answer("GET model", produce)

    @route("prism", "/prism/v1/model/reload", methods=["POST"])
    def post_model_reload(self, req, **_kwargs):
        return self.api.reload_model(req)

    @route("prism", "/metrics", methods=["GET"])
    def get_metrics(self, req, **_kwargs):
        try:
            body = render_metrics(self.api.director())
        except HttpError as error:
            return json_response(error.status, {"error": error.message})
        except Exception as error:
            self.api.logger.exception("metrics failed")
            return json_response(500, {"error": f"internal error ({type(error).__name__}); see the log"})
        response = Response(status=200, body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response


class PrismRestFallback(ControllerBase):
    """JSON 404/405 for paths under /prism and wrong methods on /metrics (registered last)."""

    def __init__(self, req, link, data, **config) -> None:
        super().__init__(req, link, data, **config)
        self.api: PrismRestApi = data[API_KEY]

    @route("prism_fallback", "/prism/{path:.*}")
    def not_found(self, req, **_kwargs):
        return self._answer(req)

    @route("prism_fallback", "/metrics")
    def metrics_method(self, req, **_kwargs):
        return self._answer(req)

    def _answer(self, req):
        path = req.path_info or "/"
        allowed = sorted({m for pattern, methods in ENDPOINTS if pattern.fullmatch(path) for m in methods})
        if path == "/metrics":
            allowed = ["GET"]
        if allowed:
            return json_response(405, {"error": f"{req.method} is not allowed on {path} (use {', '.join(allowed)})"},
                                 {"Allow": ", ".join(allowed)})  # fmt: skip
        return json_response(404, {"error": f"no endpoint {path}; see GET /prism/v1/status, /prism/v1/cells, "
                                            "/prism/v1/profiles, /prism/v1/flows, /prism/v1/model, "
                                            "/metrics"})  # fmt: skip
