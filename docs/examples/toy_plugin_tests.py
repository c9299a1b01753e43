"""The test suite of the toy plugin (its tests/test_toy.py): the shipped contracts, nothing
copied. tests/test_plugin_guide.py runs it with the toy installed as ``tensorframe-toy``."""

import pytest

from tensorframe.testing.contract import BackboneContract
from tensorframe.testing.head_contract import HeadContract


class TestToyBackbone(BackboneContract):
    config = {"name": "toy", "width": 16}  # small sizes keep it fast
    distribution = "tensorframe-toy"  # installed: its entry point is checked, and that the core never imports it
    module = "toy_plugin"  # its import name (default: the distribution's, tensorframe_toy)


class TestToyMomentHead(HeadContract):
    @pytest.fixture(scope="class")
    @classmethod
    def head_config(cls):
        return {"name": "toy_moment", "hidden": 8}
