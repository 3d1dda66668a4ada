"""The visual feature cache (``veripo.models.vision_cache``) on a tiny model of every family (the ``family``
fixture): with the tower frozen, the cached path gives the log-probs, loss and parameter gradients of the uncached
one (GRPO and DPO groups, shared prefix and per sequence, fp32, 1e-5) while the tower runs once per video; a new
grid for the same pixels, new pixels, an unfrozen tower under gradient and an optimizer step on the tower all run
it again; the spill to disk keeps to its limit and reads back equal."""

from __future__ import annotations

import pytest
import torch
from test_grouped_forward_on_cpu import run_group, worst_gradient_error

from veripo.algos.dpo import dpo_loss
from veripo.models import grouped_forward as lp
from veripo.models.adapters import freeze_parts
from veripo.models.families import family_of
from veripo.models.vision_cache import VisionFeatureCache, use_vision_cache

TOL = 1e-5


class TowerCalls:
    """Counts the vision tower's forward calls (a forward hook; removed on exit)."""

    def __init__(self, model) -> None:
        self.tower, self.count = family_of(model).vision_tower(model), 0

    def __enter__(self):
        self.hook = self.tower.register_forward_hook(lambda *_: setattr(self, "count", self.count + 1))
        return self

    def __exit__(self, *_) -> None:
        self.hook.remove()


@pytest.fixture
def cache(tiny_model):
    made = VisionFeatureCache(memory_bytes=1 << 30)
    use_vision_cache(tiny_model, made)
    yield made
    use_vision_cache(tiny_model, None)


def assert_same(reference, other):
    (loss_ref, grads_ref), (loss, grads) = reference, other
    assert abs(loss.item() - loss_ref.item()) <= TOL * max(1.0, abs(loss_ref.item()))
    assert set(grads) == set(grads_ref)
    assert worst_gradient_error(grads_ref, grads) < TOL


@pytest.mark.parametrize("shared_prefix", [True, False])
def test_cached_grpo_group_equals_uncached_with_a_frozen_tower(tiny_model, prompt, responses, shared_prefix):
    freeze_parts(tiny_model, ["vision"])
    ids, mask = responses
    reference_logps = lp.response_log_probs(tiny_model, prompt, ids, mask, shared_prefix=shared_prefix).log_probs
    reference = run_group(tiny_model, prompt, responses, shared_prefix=shared_prefix)
    cache = VisionFeatureCache(memory_bytes=1 << 30)
    use_vision_cache(tiny_model, cache)
    try:
        with TowerCalls(tiny_model) as calls:
            logps = lp.response_log_probs(tiny_model, prompt, ids, mask, shared_prefix=shared_prefix).log_probs
            first = run_group(tiny_model, prompt, responses, shared_prefix=shared_prefix)
            second = run_group(tiny_model, prompt, responses, shared_prefix=shared_prefix)
    finally:
        use_vision_cache(tiny_model, None)
    torch.testing.assert_close(logps, reference_logps, atol=TOL, rtol=0)
    assert_same(reference, first)
    assert_same(reference, second)
    # five prompt passes (three with gradient), the per-sequence ones over G copies: one tower call in all
    assert calls.count == 1
    assert cache.counts["misses"] == 1 and cache.counts["hits"] == 4


def test_cached_dpo_pairs_equal_uncached_with_a_frozen_tower(tiny_model, prompt, responses, cache):
    freeze_parts(tiny_model, ["vision"])
    ids, mask = responses  # rows 0/1 and 2/3 are two chosen/rejected pairs
    ref = lp.response_log_probs(tiny_model, prompt, ids, mask).log_probs
    ref_sums = (ref * mask).sum(-1).view(-1, 2) - 0.3

    def loss_fn(logp, _entropy, rows):
        sums = (logp * mask[rows]).sum(-1).view(-1, 2)
        pairs = rows[::2] // 2
        return dpo_loss(sums[:, 0], sums[:, 1], ref_sums[pairs, 0], ref_sums[pairs, 1], beta=0.1).loss * len(pairs) / 2

    def run(micro_batch):
        tiny_model.zero_grad(set_to_none=True)
        stats = lp.backward_group(tiny_model, prompt, ids, mask, loss_fn, micro_batch=micro_batch)
        return stats.loss, {n: p.grad.clone() for n, p in tiny_model.named_parameters() if p.grad is not None}

    use_vision_cache(tiny_model, None)
    reference = run(2)
    use_vision_cache(tiny_model, cache)
    with TowerCalls(tiny_model) as calls:
        assert_same(reference, run(2))
        assert_same(reference, run(None))
    assert calls.count == 0  # the reference log-probs above filled the cache


def test_a_new_grid_for_the_same_pixels_or_new_pixels_recompute(tiny_model, prompt, responses, cache):
    """The same pixel rows read as a 2 x 8 instead of a 4 x 4 patch grid are other features: the key holds the
    frame settings, not only the bytes."""
    ids, mask = responses
    regridded = dict(prompt, video_grid_thw=torch.tensor([[2, 2, 8]]))
    repixeled = dict(prompt, pixel_values_videos=prompt["pixel_values_videos"] + 0.5)
    with torch.no_grad():
        first = [lp.group_log_probs(tiny_model, p, ids, mask).log_probs for p in (prompt, regridded, repixeled)]
        use_vision_cache(tiny_model, None)
        expected = [lp.group_log_probs(tiny_model, p, ids, mask).log_probs for p in (prompt, regridded, repixeled)]
    assert cache.counts["misses"] == 3 and cache.counts["hits"] == 0
    for got, want in zip(first, expected):
        torch.testing.assert_close(got, want, atol=TOL, rtol=0)
    assert (expected[1] - expected[0]).abs().max() > 1e-3  # the grid matters to the tower


def test_an_unfrozen_tower_runs_under_gradient_and_after_each_optimizer_step(tiny_model, prompt, responses, cache):
    """No gradient (rollouts, reference log-probs): served from the cache while the weights stay; with gradient
    the trainable tower runs and receives its gradient; an optimizer step (or a weight load) on the tower makes
    the next no-gradient pass recompute, which then equals an uncached pass with the new weights."""
    ids, mask = responses
    tower = family_of(tiny_model).vision_tower(tiny_model)
    with TowerCalls(tiny_model) as calls:
        lp.response_log_probs(tiny_model, prompt, ids, mask)
        lp.response_log_probs(tiny_model, prompt, ids, mask)
        assert calls.count == 1
        _, grads = run_group(tiny_model, prompt, responses)
        assert calls.count == 2  # run_group's old log-probs are a hit; its training pass runs the tower
        assert any(name.startswith("model.visual") for name in grads)
        torch.optim.SGD(tower.parameters(), lr=0.5).step()
        after = lp.response_log_probs(tiny_model, prompt, ids, mask).log_probs
        assert calls.count == 3
        tower.load_state_dict({k: v * 0.9 for k, v in tower.state_dict().items()})
        reloaded = lp.response_log_probs(tiny_model, prompt, ids, mask).log_probs
        assert calls.count == 4
    use_vision_cache(tiny_model, None)
    torch.testing.assert_close(reloaded, lp.response_log_probs(tiny_model, prompt, ids, mask).log_probs,
                               atol=TOL, rtol=0)
    assert (after - reloaded).abs().max() > 1e-4


def test_image_and_multi_video_batches_are_cached_per_item(tiny_model, prompt, responses, cache, image_prompt_inputs):
    """A batch of several videos (as the rollout engine prefills) keys each video alone: a later batch holding
    one of them again computes only the new one."""
    a, b = prompt, dict(prompt, pixel_values_videos=prompt["pixel_values_videos"].flip(0))
    ids, mask = responses
    with torch.no_grad():
        lp.group_log_probs(tiny_model, image_prompt_inputs, ids, mask)
        lp.group_log_probs(tiny_model, a, ids, mask)
        assert cache.counts == {**cache.counts, "misses": 2, "hits": 0}
        merged = {"pixel_values_videos": torch.cat([a["pixel_values_videos"], b["pixel_values_videos"]]),
                  "video_grid_thw": torch.cat([a["video_grid_thw"], b["video_grid_thw"]])}
        from veripo.models.vision_cache import vision_inputs

        with TowerCalls(tiny_model) as calls:
            encoded = vision_inputs(tiny_model, merged)["mm_encoder_outputs"]["video"].pooler_output
        assert calls.count == 1 and cache.counts["hits"] == 1 and cache.counts["misses"] == 3
        use_vision_cache(tiny_model, None)
        plain = tiny_model.model.get_video_features(merged["pixel_values_videos"], merged["video_grid_thw"],
                                                    return_dict=True).pooler_output
    for got, want in zip(encoded, plain, strict=True):
        torch.testing.assert_close(got, want, atol=TOL, rtol=0)


def features(seed: int, rows: int = 8) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"pooler_output": torch.randn(rows, 16, generator=generator),
            "deepstack_0": torch.randn(rows, 16, generator=generator)}


def test_spill_keeps_to_the_disk_limit_and_reads_back_equal(tmp_path):
    entry = 2 * 8 * 16 * 4  # bytes of one entry
    cache = VisionFeatureCache(memory_bytes=2 * entry, disk_bytes=3 * entry, spill_dir=tmp_path / "spill")
    made = {f"k{i}": features(i) for i in range(7)}
    for key, value in made.items():
        cache.put(key, value)
        on_disk = sum(f.stat().st_size for f in (tmp_path / "spill").iterdir())
        assert cache.memory_used <= 2 * entry and cache.disk_used <= 3 * entry
        assert on_disk <= 3 * entry + 200 * len(list((tmp_path / "spill").iterdir()))  # + safetensors headers
    assert cache.counts["spills"] == 5 and cache.counts["dropped"] == 2  # k0, k1 pushed off the disk
    assert cache.get("k0") is None and cache.get("k1") is None
    for key in ("k2", "k3", "k4"):  # on disk
        back = cache.get(key)
        assert back.keys() == made[key].keys() and all(torch.equal(back[n], made[key][n]) for n in back)
    assert cache.counts["disk_reads"] == 3 and cache.counts["hits"] == 3 and cache.counts["misses"] == 2
    assert cache.take_counts()["hits"] == 3 and cache.take_counts()["hits"] == 0


def test_without_a_disk_spill_entries_past_the_memory_limit_are_dropped(tmp_path):
    cache = VisionFeatureCache(memory_bytes=2 * 2 * 8 * 16 * 4)
    for i in range(3):
        cache.put(f"k{i}", features(i))
    assert len(cache) == 2 and cache.counts["dropped"] == 1 and cache.get("k0") is None
    with pytest.raises(ValueError, match="spill_dir"):
        VisionFeatureCache(memory_bytes=1, disk_bytes=1)
