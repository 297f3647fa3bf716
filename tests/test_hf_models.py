"""Stock transformers models through ``refold.optimize`` as a user brings them: default configs
(caches on), other batch sizes and sequence lengths afterwards, the source's state_dict names."""
import pytest
import torch

import refold
import zoo
from refold.errors import UnsupportedError
from refold.frontends.torch.importer import import_module


def gpt2_lm_head():
    import transformers as tf

    torch.manual_seed(0)
    m = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=99, n_positions=64))
    return m.eval(), (torch.randint(0, 99, (1, 8)),)


def model_and_inputs(name):
    return gpt2_lm_head() if name == "gpt2-lm" else zoo.tiny_hf_model(name)


def leaves(out):
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def assert_same(got, want, atol=1e-4):
    assert type(got) is type(want)
    a, b = leaves(got), leaves(want)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=atol, rtol=atol)


def other_inputs(name, example):
    """Two batch sizes, and two sequence lengths where the model has one."""
    g = torch.Generator().manual_seed(1)
    x = example[0]
    if x.dtype == torch.long:
        return [torch.randint(0, 99, (2, 12), generator=g), torch.randint(0, 99, (3, 5), generator=g)]
    return [torch.randn((n, *x.shape[1:]), generator=g) for n in (2, 3)]


@pytest.mark.parametrize("name", ["gpt2-lm", "bert", "vit", "llama", "resnet"])
def test_stock_model_optimizes_runs_at_other_shapes_and_loads_its_state_dict(name):
    model, inputs = model_and_inputs(name)
    gm, report = refold.optimize(model, inputs)  # default configs: use_cache stays on
    assert report.passes and all(r.max_abs is not None and r.max_abs <= 1e-4 for r in report.passes)
    with torch.no_grad():
        for x in [*inputs, *other_inputs(name, inputs)]:
            assert_same(gm(x), model(x))
        gm.load_state_dict(model.state_dict())  # strict
        assert set(gm.state_dict()) == set(model.state_dict())
        x = other_inputs(name, inputs)[0]
        assert_same(gm(x), model(x))


def test_gpt2_lm_head_keeps_its_cache_and_layernorm_to_rmsnorm_runs():
    model, (ids,) = gpt2_lm_head()
    gm, report = refold.optimize(model, (ids,), passes=["layernorm-to-rmsnorm"])
    assert report.record("layernorm-to-rmsnorm").stats["converted"] >= 1
    x = torch.randint(0, 99, (2, 12))
    with torch.no_grad():
        got, want = gm(x), model(x)
    assert type(got.past_key_values) is type(want.past_key_values)  # DynamicCache, as a pytree
    assert_same(got, want)


def test_cache_type_that_cannot_be_registered_is_dropped_with_a_note():
    class ToyCache:
        def __init__(self, t):
            self.t = t

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("Config", (), {"use_cache": True})()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x):
            y = self.lin(x)
            return {"y": y, "cache": ToyCache(y)} if self.config.use_cache else {"y": y}

    m, x = Toy().eval(), torch.randn(2, 4)
    with pytest.warns(UserWarning, match="ToyCache.*use_cache=False.*register_pytree_node"):
        ir = import_module(m, (x,))
    assert len(ir.meta["torch.notes"]) == 1 and "\n" not in ir.meta["torch.notes"][0]
    assert m.config.use_cache is True  # restored
    gm, _ = refold.optimize(m, (x,), passes=[])
    out = gm(torch.randn(3, 4))
    assert list(out) == ["y"] and out["y"].shape == (3, 4)


class Opaque:
    pass


class ReturnsOpaque(torch.nn.Module):
    def forward(self, x):
        return x * len(x), Opaque()  # len(): symbolic_trace cannot run it either


def test_capture_errors_are_not_truncated():
    with pytest.raises(UnsupportedError) as e:
        import_module(ReturnsOpaque(), (torch.randn(3),))
    msg = str(e.value)
    # torch's first line ends "...we'll make this more ergonomic to deal with" (was cut at 300)
    assert "Opaque" in msg and "ergonomic to deal with" in msg, msg


def test_dims_are_dynamic_by_default_and_can_be_given_or_pinned():
    model, (ids,) = gpt2_lm_head()
    ir = refold.load(model, (ids,))
    shape = ir.graph.inputs[0].shape
    assert len(shape) == 2 and all(isinstance(d, str) for d in shape), shape  # symbolic, as strings
    gm, _ = refold.optimize(model, (ids,), passes=[])  # an example of batch 1, then any batch
    x = torch.randint(0, 99, (2, 12))
    with torch.no_grad():
        assert_same(gm(x), model(x))
    # as torch.export takes them: a dynamic batch, the sequence length pinned
    batch = torch.export.Dim("batch", max=64)
    ids2 = torch.randint(0, 99, (2, 8))
    ir = refold.load(model, (ids2,), dynamic_shapes={"input_ids": {0: batch}})
    assert isinstance(ir.graph.inputs[0].shape[0], str) and ir.graph.inputs[0].shape[1] == 8
    for pinned in (False, None, {}):
        ir = refold.load(model, (ids2,), dynamic_shapes=pinned)
        assert ir.graph.inputs[0].shape == (2, 8)
    gm, _ = refold.optimize(model, (ids2,), passes=[], dynamic_shapes=False)
    with pytest.raises(RuntimeError):  # the example's shape is baked in
        gm(x)


def test_state_dict_names_kept_ties_kept_and_no_refold_constants():
    model, (ids,) = gpt2_lm_head()
    original = model.state_dict()
    gm, _ = refold.optimize(model, (ids,), passes=[])
    assert list(gm.state_dict()) and set(gm.state_dict()) == set(original)
    assert gm.lm_head.weight is gm.transformer.wte.weight  # a tie stays a tie
    assert isinstance(gm.lm_head.weight, torch.nn.Parameter)
    gm.load_state_dict(original)
    # after a pass: the names are the source's; what changed keeps its name
    gm, _ = refold.optimize(model, (ids,), passes=["layernorm-to-rmsnorm"])
    sd = gm.state_dict()
    assert set(sd) == set(original), sorted(set(sd) ^ set(original))
    assert not any("_refold_const" in k or k.endswith("_folded") for k in sd)
    assert any(k.startswith("_refold_const") for k, _ in gm.named_buffers())  # non-persistent
    changed = {k for k in original if not torch.equal(sd[k], original[k])}
    assert "transformer.wte.weight" in changed  # the embedding table, recentred, under its name
    torch.testing.assert_close(sd["lm_head.weight"], original["lm_head.weight"])  # unchanged
    gm.load_state_dict(original)
