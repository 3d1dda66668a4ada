"""The KV-cache keyword follows the installed transformers: ``cache`` where the model takes it, else
``past_key_values``; the pytest config turns the old name's FutureWarning into an error everywhere."""

import inspect

from transformers.modeling_outputs import BaseModelOutputWithPast

from veripo.models.cache_api import cache_kwargs, output_cache


class _NewModel:
    def forward(self, input_ids=None, cache=None, use_cache=None):
        return cache


class _OldModel:
    def forward(self, input_ids=None, past_key_values=None, use_cache=None):
        return past_key_values


def test_keyword_follows_the_forward_signature():
    marker = object()
    assert cache_kwargs(_NewModel(), marker) == {"cache": marker}
    assert cache_kwargs(_OldModel(), marker) == {"past_key_values": marker}


def test_installed_qwen_takes_the_name_we_pass(policy):
    name = next(iter(cache_kwargs(policy.model.model, None)))
    assert name in inspect.signature(type(policy.model.model).forward).parameters


def test_output_cache_reads_either_field():
    marker = object()
    fields = BaseModelOutputWithPast.__dataclass_fields__
    key = "cache" if "cache" in fields else "past_key_values"
    out = BaseModelOutputWithPast(**{key: marker})
    assert output_cache(out) is marker
    assert output_cache({"past_key_values": marker}) is marker
