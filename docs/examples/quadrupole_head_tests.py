"""The test suite of the quadrupole head plugin: the head contract. tests/test_plugin_guide.py
runs it with the plugin given as an extra plugin (``extra_plugins``), not installed."""

import pytest

from tensorframe.testing.head_contract import HeadContract


class TestQuadrupoleHead(HeadContract):
    @pytest.fixture(scope="class")
    @classmethod
    def head_config(cls):
        return {"name": "quadrupole", "hidden": 16}
