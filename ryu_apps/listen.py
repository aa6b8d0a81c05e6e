"""Where ryu-manager listens: OpenFlow and the REST API on loopback unless configured otherwise.

Ryu's own defaults are 0.0.0.0 for both. Importing this module makes them
127.0.0.1 (an option given on the command line still wins); the
configuration's ``openflow.listen`` and ``rest.listen`` override both, so
the addresses a deployment exposes are written in its configuration. The
overrides are applied while the apps are built, before ryu-manager starts
the OpenFlow listener and the WSGI server.
"""

from __future__ import annotations

import ryu.app.wsgi  # noqa: F401 - registers wsapi_host / wsapi_port
import ryu.controller.controller  # noqa: F401 - registers ofp_listen_host / ofp_tcp_listen_port
from ryu import cfg

from prism.config.types import PrismConfig

LOOPBACK = "127.0.0.1"

cfg.CONF.set_default("ofp_listen_host", LOOPBACK)
cfg.CONF.set_default("wsapi_host", LOOPBACK)


def apply_listen_addresses(config: PrismConfig, logger) -> None:
    """Make ryu-manager listen where the configuration says (``openflow.listen``, ``rest.listen``)."""
    conf = cfg.CONF
    if config.openflow.listen is not None:
        host, port = config.openflow.listen
        conf.set_override("ofp_listen_host", host)
        conf.set_override("ofp_tcp_listen_port", port)
    if config.rest.listen is not None:
        host, port = config.rest.listen
        conf.set_override("wsapi_host", host)
        conf.set_override("wsapi_port", port)
    logger.info("OpenFlow on %s:%s, REST API on %s:%s", conf.ofp_listen_host, conf.ofp_tcp_listen_port,
                conf.wsapi_host, conf.wsapi_port)
