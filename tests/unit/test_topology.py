"""The Mininet topology and its configuration with several switches: hosts and cells spread, configs valid."""

from __future__ import annotations

import pytest
import yaml

from mininet_topos.prism_topo import PrismTopo, layout, prism_config, switch_of
from prism.config.load import parse_config


def test_one_switch_is_the_topology_it_always_was():
    config = prism_config(2, 1, 3)
    assert [s["dpid"] for s in config["switches"]] == [1]
    assert config["switches"][0]["edge_ports"] == [1, 2, 3]
    assert [c["port"] for c in config["switches"][0]["cells"]] == [101, 102, 103]
    assert config == prism_config(2, 1, 3, switches=1)


@pytest.mark.parametrize("switches", [2, 3, 5])
def test_hosts_and_cells_are_spread_and_every_switch_is_configured(switches):
    pods = layout(switches * 2, switches, switches * 2, switches)
    assert all(len(p["cells"]) == 2 and len(p["edge"]) == 3 for p in pods)
    config = parse_config(yaml.safe_dump(prism_config(switches * 2, switches, switches * 2, switches=switches)))
    assert sorted(config.switches) == list(range(1, switches + 1))
    topo = PrismTopo(clients=switches * 2, servers=switches, cells=switches * 2, switches=switches)
    assert len(topo.switches()) == switches
    assert switch_of("cell2", switches * 2, switches, switches * 2, switches) == "s2"


def test_fewer_hosts_than_switches_is_refused():
    with pytest.raises(ValueError, match="per switch"):
        layout(1, 1, 3, switches=2)
