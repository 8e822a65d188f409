"""Codebook: EMA with Laplace smoothing, k-means++ init, dead-code revival, usage statistics, arguments."""

import warnings

import pytest
import torch

from patchvq import reference
from patchvq.layers import Codebook, kmeans


def _clusters(k, per, dim, spread=0.01, seed=0):
    """Rows around k well-separated centers: (rows [k * per, dim], centers [k, dim])."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, dim, generator=g) * 10
    rows = centers.repeat_interleave(per, 0) + spread * torch.randn(k * per, dim, generator=g)
    return rows[torch.randperm(k * per, generator=g)], centers


def test_ema_update_follows_the_laplace_smoothed_formula():
    torch.manual_seed(0)
    book = Codebook(6, 3, decay=0.7, eps=1e-3)
    count0, sum0, = book.ema_count.clone(), book.ema_sum.clone()
    x = torch.randn(40, 3)
    index = torch.randint(-1, 6, (40,))
    book.ema_update(x, index)
    count, total = reference.code_stats(x, index, 6)
    want_count = 0.7 * count0 + 0.3 * count
    want_sum = 0.7 * sum0 + 0.3 * total
    n = want_count.sum()
    smoothed = (want_count + 1e-3) / (n + 6 * 1e-3) * n
    torch.testing.assert_close(book.ema_count, want_count)
    torch.testing.assert_close(book.ema_sum, want_sum)
    torch.testing.assert_close(book.weight, want_sum / smoothed[:, None])


def test_search_is_the_nearest_code():
    book = Codebook(17, 5)
    x = torch.randn(100, 5)
    index, distance = book.search(x)
    full = torch.cdist(x.double(), book.weight.double()).pow(2)
    torch.testing.assert_close(distance.double(), full.min(1).values, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full.gather(1, index[:, None])[:, 0], full.min(1).values, rtol=1e-5, atol=1e-5)


def test_kmeans_init_finds_separated_clusters_once():
    torch.manual_seed(0)
    rows, centers = _clusters(8, 50, 4)
    book = Codebook(8, 4, kmeans_init=True, kmeans_iters=5)
    assert not book.initialised
    book.maybe_init(rows)
    assert book.initialised
    nearest = torch.cdist(centers, book.weight).min(1).values
    assert bool((nearest < 0.1).all()), nearest
    assert torch.equal(book.ema_count.sort().values, torch.full((8,), 50.0))
    before = book.weight.clone()
    book.maybe_init(torch.randn(30, 4))
    assert torch.equal(book.weight, before)


def test_kmeans_init_ignores_masked_rows():
    torch.manual_seed(1)
    rows, _ = _clusters(4, 30, 3)
    outliers = torch.full((20, 3), 1e3)
    x = torch.cat([rows, outliers])
    valid = torch.cat([torch.ones(120, dtype=torch.bool), torch.zeros(20, dtype=torch.bool)])
    book = Codebook(4, 3, kmeans_init=True)
    book.maybe_init(x, valid)
    assert book.weight.abs().max() < 100


def test_kmeans_with_all_rows_masked_stays_uninitialised():
    book = Codebook(4, 3, kmeans_init=True)
    book.maybe_init(torch.randn(10, 3), torch.zeros(10, dtype=torch.bool))
    assert not book.initialised
    book.maybe_init(torch.randn(10, 3))
    assert book.initialised


def test_search_before_kmeans_init_warns_and_after_does_not():
    book = Codebook(4, 3, kmeans_init=True)
    with pytest.warns(RuntimeWarning, match="k-means init"):
        book.search(torch.randn(5, 3))
    book.maybe_init(torch.randn(40, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        book.search(torch.randn(5, 3))


def test_kmeans_seeding_and_sampling_are_bounded():
    torch.manual_seed(0)
    x = torch.randn(5000, 2)
    valid = torch.rand(5000) < 0.3
    rows, available = kmeans.sample_rows(x, valid, 64)
    assert rows.shape == (64, 2) and int(available) == 64
    chosen = torch.cdist(rows, x).argmin(1)
    assert bool(valid[chosen].all()) and chosen.unique().numel() == 64
    few = torch.zeros(5000, dtype=torch.bool)
    few[:3] = True
    rows, available = kmeans.sample_rows(x, few, 64)
    assert int(available) == 3 and set(torch.cdist(rows[:3], x).argmin(1).tolist()) == {0, 1, 2}
    seeds = kmeans.seed(x[:7], 10)
    assert seeds.shape == (10, 2) and torch.cdist(seeds, x[:7]).min(1).values.max() == 0


def _dead_book(threshold=1.0, k=8, dim=3, dead=(0, 3, 5)):
    book = Codebook(k, dim, threshold_ema_dead_code=threshold, decay=0.5)
    book.weight[list(dead)] = -1e4  # far from any data, so no row is assigned to a dead code
    book.ema_count.fill_(100.0)
    book.ema_sum.copy_(book.weight * 100.0)
    book.ema_count[list(dead)] = 0.0
    book.ema_sum[list(dead)] = 0.0
    return book


def test_dead_codes_are_revived_from_distinct_valid_rows():
    torch.manual_seed(0)
    book = _dead_book()
    x = torch.randn(50, 3)
    x[40:] = 1e3
    index = torch.where(torch.arange(50) < 40, book.search(x)[0], -1)
    before = book.weight.clone()
    book.ema_update(x, index)
    dead = [0, 3, 5]
    revived = book.weight[dead]
    match = torch.cdist(revived, x[:40]).min(1)
    assert bool((match.values == 0).all()), "revived codes are rows of the batch"
    assert match.indices.unique().numel() == 3, "distinct rows"
    assert not torch.equal(revived, before[dead]), "revived codes moved"
    torch.testing.assert_close(book.ema_count[dead], torch.ones(3))
    torch.testing.assert_close(book.ema_sum[dead], revived)
    assert book.usage()["revived"] == 3.0
    live = [1, 2, 4, 6, 7]
    assert bool((book.ema_count[live] >= 1).all())


def test_more_dead_codes_than_rows_revives_only_as_many_as_rows():
    book = _dead_book(dead=(0, 1, 2, 3, 4))
    x = torch.randn(2, 3)
    book.ema_update(x, torch.tensor([6, 7]))
    assert book.usage()["revived"] == 2.0
    assert torch.cdist(book.weight[:2], x).min(1).values.max() == 0
    second = torch.randn(10, 3)
    book.ema_update(second, torch.full((10,), 6))
    assert torch.cdist(book.weight[2:5], second).min(1).values.max() == 0
    # The two codes revived first were unused since, so they decayed below the threshold again.
    assert book.usage()["revived"] == 7.0


def test_all_masked_batch_revives_nothing_and_keeps_codes_finite():
    book = _dead_book()
    book.ema_update(torch.randn(20, 3), torch.full((20,), -1))
    assert book.usage()["revived"] == 0.0
    assert bool(torch.isfinite(book.weight).all())
    empty = _dead_book()
    empty.ema_update(torch.empty(0, 3), torch.empty(0, dtype=torch.int64))
    assert empty.usage()["revived"] == 0.0 and bool(torch.isfinite(empty.weight).all())


def test_usage_statistics():
    book = Codebook(4, 2, threshold_ema_dead_code=0.5)
    book.ema_count.copy_(torch.tensor([1.0, 1.0, 1.0, 1.0]))
    usage = book.usage()
    assert usage["perplexity"] == pytest.approx(4.0) and usage["live_fraction"] == 1.0
    book.ema_count.copy_(torch.tensor([8.0, 0.0, 0.0, 0.25]))
    usage = book.usage()
    p = torch.tensor([8.0, 0.25]) / 8.25
    assert usage["perplexity"] == pytest.approx(float((-(p * p.log()).sum()).exp()))
    assert usage["live_fraction"] == 0.25 and usage["revived"] == 0.0


def test_cosine_codes_stay_unit_length():
    book = Codebook(5, 4, metric="cosine")
    x = torch.randn(64, 4) * 7
    book.ema_update(x, book.search(x)[0])
    torch.testing.assert_close(book.weight.norm(dim=1), torch.ones(5))


def test_learnable_codebook_is_a_parameter_untouched_by_ema():
    book = Codebook(5, 4, learnable=True)
    assert isinstance(book.weight, torch.nn.Parameter)
    before = book.weight.detach().clone()
    x = torch.randn(30, 4)
    book.ema_update(x, book.search(x)[0])
    assert torch.equal(book.weight.detach(), before)
    assert book.ema_count.sum() != 5.0


def test_state_dict_round_trip_restores_initialisation():
    rows, _ = _clusters(4, 20, 3)
    book = Codebook(4, 3, kmeans_init=True, threshold_ema_dead_code=0.1)
    book.maybe_init(rows)
    book.ema_update(rows, book.search(rows)[0])
    fresh = Codebook(4, 3, kmeans_init=True, threshold_ema_dead_code=0.1)
    fresh.load_state_dict(book.state_dict())
    fresh.maybe_init(torch.randn(10, 3))
    for name, value in book.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name
    assert fresh.usage() == book.usage()


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"num_codes": 0, "dim": 3}, "num_codes"),
        ({"num_codes": 4, "dim": 0}, "dim"),
        ({"num_codes": 4, "dim": 3, "decay": 1.5}, "decay"),
        ({"num_codes": 4, "dim": 3, "eps": 0.0}, "eps"),
        ({"num_codes": 4, "dim": 3, "kmeans_iters": -1}, "kmeans_iters"),
        ({"num_codes": 4, "dim": 3, "threshold_ema_dead_code": -1.0}, "threshold_ema_dead_code"),
        ({"num_codes": 4, "dim": 3, "metric": "l1"}, "metric"),
    ],
)
def test_bad_arguments_are_named(kwargs, words):
    with pytest.raises(ValueError, match=words):
        Codebook(**kwargs)
