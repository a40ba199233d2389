"""pytest set-up of the sagan-attn Python tests: the `slow` marker and the `device` and
`restore_threads` fixtures. The code the tests share (inputs, gradient runners, criteria, the oracle
check, DEVICES) is in op_testing.py; import it from there."""
from __future__ import annotations

import pytest
import torch

# Re-exported for test files that still import these names from conftest; new code imports op_testing.
from op_testing import (  # noqa: F401
    DEVICES,
    INPUT_NAMES,
    OP,
    Inputs,
    assert_rel_max_close,
    assert_same_nonfinite,
    assert_style_rule,
    leaves,
    make_inputs,
    max_abs,
    max_abs_err,
    random_grad,
    run_with_grads,
)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: a long-running test (still part of the default run; deselect with -m 'not slow')"
    )


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Each test that takes it runs once per available device: "cpu", and "cuda" where a GPU is
    visible (test ids "cpu" / "cuda", so `-k cuda` selects the GPU half)."""
    return request.param


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
