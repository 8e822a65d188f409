"""The progressive budget: target schedule, spend, richness weighting, and that it steers a router."""

import pytest
import torch

from patchvq.layers import budget, routing
from patchvq.layers.context_richness import context_richness


@pytest.mark.parametrize("progress, target", [(0.0, 1.0), (0.25, 0.7), (0.5, 0.4), (0.9, 0.4), (1.0, 0.4)])
def test_target_falls_linearly_over_first_half(progress, target):
    assert budget.budget_target(progress).item() == pytest.approx(target)


def test_level_costs():
    assert budget.level_costs([1, 2, 4]) == [16, 4, 1]
    assert budget.level_costs([1, 4]) == [16, 1]
    assert budget.level_costs([1]) == [1]


def gate_for(choice, levels=3):
    return routing.one_hot_gate(choice, levels, torch.float32)


def test_spent_fraction_counts_codes():
    costs = [16, 4, 1]
    fine, mid, coarse = (torch.full((2, 3, 3), level) for level in range(3))
    assert budget.spent_fraction(gate_for(fine), costs).tolist() == [1.0, 1.0]
    assert budget.spent_fraction(gate_for(mid), costs).tolist() == [0.25, 0.25]
    assert budget.spent_fraction(gate_for(coarse), costs).tolist() == [1 / 16, 1 / 16]
    mixed = torch.tensor([[[0, 2], [2, 2]]])
    assert budget.spent_fraction(gate_for(mixed), costs).item() == pytest.approx((1 + 3 / 16) / 4)


def test_richness_makes_fine_codes_dear_in_simple_patches():
    costs = [16, 4, 1]
    fine = torch.zeros(1, 2, 2, dtype=torch.int64)
    coarse = torch.full((1, 2, 2), 2)
    rich, simple = torch.ones(1, 2, 2), torch.zeros(1, 2, 2)
    assert budget.spent_fraction(gate_for(fine), costs, rich).item() == pytest.approx(1.0)
    assert budget.spent_fraction(gate_for(fine), costs, simple).item() == pytest.approx(1 + 15 / 16)
    assert budget.spent_fraction(gate_for(coarse), costs, simple).item() == pytest.approx(1 / 16)


def test_background_patches_count_as_simple():
    gen = torch.Generator().manual_seed(0)
    image = 0.5 + 1e-3 * torch.randn(1, 1, 32, 64, generator=gen)
    image[..., 32:] = torch.rand(1, 1, 32, 32, generator=gen)
    plain = context_richness(image, 32)
    assert plain[0, 0, 0] > 0.9, "faint noise alone spreads over all bands"
    richness = budget.patch_richness(image, 32, background_variance=1e-4)
    assert richness[0, 0, 0] == 0 and richness[0, 0, 1] == plain[0, 0, 1]


def expected_spend(logits, costs, richness=None):
    return budget.spent_fraction(logits.softmax(1), costs, richness)


@pytest.mark.parametrize("target", [0.9, 0.2])
def test_budget_loss_moves_spend_to_target(target):
    torch.manual_seed(0)
    costs = [16, 4, 1]
    logits = torch.zeros(4, 3, 4, 4, requires_grad=True)
    start = expected_spend(logits, costs).mean().item()
    optimiser = torch.optim.Adam([logits], lr=0.05)
    for _ in range(300):
        gate, _ = routing.hard_gumbel_gate(logits, 1.0)
        loss = budget.budget_loss(gate, costs, target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    end = expected_spend(logits.detach(), costs).mean().item()
    assert abs(end - target) < 0.05 < abs(start - target), (start, end)


def test_richness_sends_fine_codes_to_rich_patches():
    torch.manual_seed(1)
    costs = [16, 4, 1]
    richness = torch.zeros(4, 4, 4)
    richness[:, :, 2:] = 1.0
    logits = torch.zeros(4, 3, 4, 4, requires_grad=True)
    optimiser = torch.optim.Adam([logits], lr=0.05)
    for _ in range(300):
        gate, _ = routing.hard_gumbel_gate(logits, 1.0)
        loss = budget.budget_loss(gate, costs, 0.5, richness)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    fine_share = logits.detach().softmax(1)[:, 0]
    assert fine_share[:, :, 2:].mean() > fine_share[:, :, :2].mean() + 0.1
