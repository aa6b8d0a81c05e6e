"""Packaging for PRISM: the ``prism`` command and its Python packages.

Installed by ``make setup`` as ``pip install -e .[test] -c constraints.txt``
into ``.venv``; every version is pinned in ``constraints.txt``.
"""

from setuptools import find_packages, setup

PACKAGE_PATTERNS = [
    "prism",
    "prism.*",
    "models",
    "models.*",
    "ryu_apps",
    "ryu_apps.*",
    "mininet_topos",
    "mininet_topos.*",
]

setup(
    name="prism",
    version="0.1.0",
    description="PRISM: predictive replication of flow state with packet mirroring",
    packages=find_packages(include=PACKAGE_PATTERNS),
    # The shipped model (models/default: skops model + JSON manifest), found beside
    # the code (mininet_topos.prism_topo.DEFAULT_MODEL_DIR), so it is package data.
    package_data={
        "models": ["default/*.skops", "default/*.json", "first_packet/*.skops", "first_packet/*.json"],
        "prism": ["*.yaml", "*.json"],
    },
    include_package_data=True,
    # The example configuration, documenting every key: <prefix>/share/prism/examples/
    # in a non-editable install (tests/unit/test_packaging.py checks both).
    data_files=[("share/prism/examples", ["examples/prism.yaml"])],
    python_requires="~=3.11",
    install_requires=[
        # Ryu 4.34 needs setuptools<68 to build and a one-line patch to start
        # with eventlet >= 0.30: scripts/setup.sh does both (see README).
        "ryu==4.34",
        # 0.33.3 is the first that imports on Python 3.11; 0.41 prints a
        # deprecation banner on every import (each ryu-manager start).
        "eventlet>=0.33.3,<0.41",
        "pyyaml",
        # The configuration's schema (prism/config): declared as models instead of
        # hand-written checks; read once at start, never on a packet's path. Pinned
        # exactly (it pins its pydantic-core); constraints.txt pins the rest.
        "pydantic==2.14.4",
        "numpy",
        "pandas",
        "pyarrow",
        "scikit-learn",
        "skops",
        "prometheus-client",
        "dpkt",
        "tqdm",
        "matplotlib",
        "webob",
        "routes",
        # Several controllers share a network through etcd (leases, shared state): etcd3gw
        # is OpenStack's etcd v3 client over the HTTP gateway, built on requests, so its
        # calls are green under ryu-manager's eventlet (grpc-based clients block the hub).
        "etcd3gw",
    ],
    extras_require={
        "test": [
            "pytest",
            "pytest-timeout",
            "hypothesis",
            # The architecture's import contracts (.importlinter), run by
            # tests/unit/test_layers.py; acyclic_siblings contracts need 2.x.
            "import-linter>=2.17,<3",
            # Executing notebooks headless: nbclient runs them in an ipykernel.
            "nbclient",
            "nbformat",
            "ipykernel",
        ],
    },
    entry_points={
        "console_scripts": ["prism=prism.cli:main"],
    },
)
