"""Shared test helpers: the real fixtures in ../shared/data (skip cleanly when absent)."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shared_path(*parts: str) -> Path:
    """Path under ../shared, or skip the test when a user's clone has no ../shared."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"fixture {path} not present (../shared is only on the project's machines)")
    return path


@pytest.fixture
def one_thread():
    """Tiny tensors: a second OpenMP thread only adds spin-waits on a busy 2-core machine."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def build_or_skip(method: str, trunk):
    """``build_method``, or skip the pair when the method refuses that trunk with its clear
    ValueError (e.g. Liang et al.'s patch model needs its own stride-1 networks)."""
    from pretext.methods import build_method

    try:
        return build_method(method, trunk)
    except ValueError as exc:
        assert trunk.encoder_name in str(exc)  # the refusal names the trunk it cannot use
        pytest.skip(f"{method} refuses {trunk.encoder_name}: {exc}")
