"""The project's hypothesis profiles (HYPOTHESIS_PROFILE=ci|dev|thorough), as in the core's tests."""

from tensorframe.testing import load_hypothesis_profile

load_hypothesis_profile()
