import json

import pytest
import torch

from pretext.color import rebalance
from pretext.color.bins import ab_centers


def test_weights_hand_case_without_smoothing():
    # Q = 4, p = [.5, .5, 0, 0], lam = 1/2, no smoothing:
    # mixed = .5 p + .5/4 = [.375, .375, .125, .125] -> 1/mixed = [8/3, 8/3, 8, 8]
    # sum p*w = 8/3 -> w = [1, 1, 3, 3]
    centers = torch.tensor([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [100.0, 100.0]])
    w = rebalance.rebalance_weights(torch.tensor([0.5, 0.5, 0.0, 0.0]), lam=0.5, sigma=0.0, centers=centers)
    assert torch.allclose(w, torch.tensor([1.0, 1.0, 3.0, 3.0]), atol=1e-6)


def test_lam_one_gives_uniform_weights_of_one():
    p = torch.rand(313)
    assert torch.allclose(rebalance.rebalance_weights(p, lam=1.0), torch.ones(313), atol=1e-5)


def test_smoothing_hand_case():
    # two centres 10 apart, sigma 5: kernel off-diagonal e^{-100/50} = e^{-2}
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    got = rebalance.smooth_prior(torch.tensor([1.0, 0.0], dtype=torch.float64), sigma=5.0, centers=centers)
    e = torch.exp(torch.tensor(-2.0, dtype=torch.float64))
    assert torch.allclose(got, torch.stack([1 / (1 + e), e / (1 + e)]))


def test_real_centre_set_expectation_is_one_and_rare_bins_weigh_more():
    torch.manual_seed(0)
    p = torch.rand(313) ** 4  # a peaked prior
    w = rebalance.rebalance_weights(p)
    p_s = rebalance.smooth_prior(p / p.sum())
    assert abs(float((p_s * w).sum()) - 1.0) < 1e-5
    assert w.shape == (313,) and (w > 0).all()
    # weights are a decreasing function of the smoothed prior
    order = p_s.argsort()
    assert torch.all(w[order][:-1] >= w[order][1:] - 1e-6)


def test_accumulator_counts_nearest_bins_and_masks():
    acc = rebalance.PriorAccumulator()
    ab = torch.zeros(2, 2, 3, 3)
    ab[1] = 48.0  # (48, 48) -> nearest centre (50, 50)
    acc.update(ab, mask=torch.tensor([False, True]))
    c = ab_centers()
    hit = int(((c - torch.tensor([50.0, 50.0])).abs().sum(1) == 0).nonzero())
    assert acc.counts[hit] == 9 and acc.counts.sum() == 9 and acc.images == 1
    assert acc.prior()[hit] == 1.0


def test_prior_file_round_trip_and_bad_file(tmp_path):
    counts = torch.arange(313, dtype=torch.float64)
    rebalance.save_prior(tmp_path / "p.json", counts, {"source": "test"})
    p = rebalance.load_prior(tmp_path / "p.json")
    assert torch.allclose(p, (counts / counts.sum()).float())
    assert json.loads((tmp_path / "p.json").read_text())["source"] == "test"
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a colorbench prior"):
        rebalance.load_prior(tmp_path / "bad.json")


def test_bad_arguments():
    with pytest.raises(ValueError, match="lam"):
        rebalance.rebalance_weights(torch.rand(313), lam=1.5)
    with pytest.raises(ValueError, match="finite"):
        rebalance.rebalance_weights(torch.full((313,), float("nan")))
    with pytest.raises(ValueError, match="empty"):
        rebalance.PriorAccumulator().prior()
