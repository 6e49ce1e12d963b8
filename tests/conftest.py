"""pytest configuration: every test starts from the same seed; ``--fast`` selects the fast tier.

``pytest --fast`` (``make test-fast``) runs every module's tests, cheaper: the equivariance tests check
:data:`FAST_ROTATIONS` random rotations instead of ``helpers.NUM_ROTATIONS`` (the ``num_rotations`` fixture, and
the default of ``helpers.random_rotations``); ``torch.autograd.gradcheck`` and ``gradgradcheck`` default to
``fast_mode=True`` for the session (one random projection of the Jacobian instead of all of it; a call that passes
``fast_mode`` itself keeps it); and tests marked ``slow`` (subprocesses, training runs, examples) are skipped.
Without ``--fast`` (``make test``, CI) nothing changes: all rotations, full Jacobians, every test.
"""

import functools

import helpers
import pytest
import torch

#: Random rotations per equivariance check under ``--fast``.
FAST_ROTATIONS = 3


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fast",
        action="store_true",
        default=False,
        help=f"the fast tier: {FAST_ROTATIONS} rotations per equivariance check, fast-mode gradcheck, no slow tests",
    )


_GRADCHECKS = {"gradcheck": torch.autograd.gradcheck, "gradgradcheck": torch.autograd.gradgradcheck}


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--fast"):
        helpers.NUM_ROTATIONS = FAST_ROTATIONS
        for name, check in _GRADCHECKS.items():
            setattr(torch.autograd, name, functools.partial(check, fast_mode=True))


def pytest_unconfigure(config: pytest.Config) -> None:
    for name, check in _GRADCHECKS.items():
        setattr(torch.autograd, name, check)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    fast = config.getoption("--fast")
    skip = pytest.mark.skip(reason="slow: skipped by --fast (run by `make test`)")
    for item in items:
        if fast and "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def fast(request: pytest.FixtureRequest) -> bool:
    """Whether the fast tier (``--fast``) runs."""
    return bool(request.config.getoption("--fast"))


@pytest.fixture
def num_rotations() -> int:
    """Random rotations per equivariance check: ``helpers.NUM_ROTATIONS`` (20; :data:`FAST_ROTATIONS` under
    ``--fast``, set by :func:`pytest_configure`). A test that checked fewer takes ``min(its_number,
    num_rotations)``."""
    return helpers.NUM_ROTATIONS


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(1234)


@pytest.fixture
def one_thread():
    """Tiny batches: one intra-op thread is as fast on an idle machine, and far faster on a busy one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Each device the tests can run on: the CPU, and CUDA where there is a GPU. TF32 is off while a test runs,
    so that float32 matrix products on an Ampere-or-later GPU keep float32's precision (the tolerances assume it);
    the CPU never uses TF32, so its tests are unchanged."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield torch.device(request.param)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
