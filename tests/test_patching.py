"""Activation patching on sslens's own models (issue 9 item 4).

For the Y/Z model (scan_snap), the rank-collapse model and the small-init LM, EVERY hook point in
``model.hook_dict`` is patched with a known tensor through ``run_with_hooks`` and the logits are compared
with an independent plain-torch forward of the model's formula (docs/theory.md §1.1, §2.1) that takes the
same value as an override at that named intermediate. ``run_with_cache`` values equal the formula's
intermediates. Hook points that a config does not call (``hook_result``, ``hook_q_input``...) are switched
on in a second pass (``set_use_attn_result`` etc.) so that every name is exercised.
"""

from __future__ import annotations

import einops
import pytest
import torch
import torch.nn.functional as F

from sslens.models import build, scan_snap_config
from sslens.models.rank_collapse import rank_collapse_config, small_init_lm_config

TOL = 1e-5


def formula(model, tokens, over: dict, *, no_self=False, no_residual=False, l2=False, act=F.gelu):
    """Plain-torch forward of an sslens model (no LayerNorm), written from the papers' formulas.

    ``over[name]`` replaces the intermediate ``name`` (TransformerLens hook names); returns (logits, acts).
    The flags are the model's architecture: Y/Z = attn-only + no_self + no_residual + l2 (theory §1.1),
    rank collapse = no_residual + tanh MLP (§2.1), small-init LM = standard block with GeLU.
    """
    cfg = model.cfg
    acts: dict[str, torch.Tensor] = {}

    def h(name, x):
        if name in over:
            x = over[name]
        acts[name] = x
        return x

    B, P = tokens.shape
    H, dm = cfg.n_heads, cfg.d_model
    resid = h("hook_embed", model.W_E[tokens]) + h("hook_pos_embed", model.W_pos[:P].expand(B, P, dm))
    causal = torch.ones(P, P, dtype=torch.bool).tril()
    if no_self:
        causal &= ~torch.eye(P, dtype=torch.bool)
        causal[0, 0] = True  # position 0 has no earlier key: it keeps itself
    for l in range(cfg.n_layers):
        b = f"blocks.{l}."
        pre = h(b + "hook_resid_pre", resid)
        per_head = einops.repeat(pre, "b p m -> b p h m", h=H)
        if cfg.use_attn_in:
            q_in = k_in = v_in = h(b + "hook_attn_in", per_head)
        elif cfg.use_split_qkv_input:
            q_in, k_in, v_in = (h(b + f"hook_{x}_input", per_head) for x in "qkv")
        else:
            q_in = k_in = v_in = per_head
        q = h(b + "attn.hook_q", torch.einsum("bphm,hmd->bphd", q_in, model.W_Q[l]) + model.b_Q[l])
        k = h(b + "attn.hook_k", torch.einsum("bphm,hmd->bphd", k_in, model.W_K[l]) + model.b_K[l])
        v = h(b + "attn.hook_v", torch.einsum("bphm,hmd->bphd", v_in, model.W_V[l]) + model.b_V[l])
        scale = cfg.d_head**0.5 if cfg.use_attn_scale else 1.0
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / scale
        scores = h(b + "attn.hook_attn_scores", scores.masked_fill(~causal, float("-inf")))
        pattern = h(b + "attn.hook_pattern", torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0))
        z = h(b + "attn.hook_z", torch.einsum("bhqk,bkhd->bqhd", pattern, v))
        if cfg.use_attn_result:
            attn_out = h(b + "attn.hook_result", torch.einsum("bqhd,hdm->bqhm", z, model.W_O[l])).sum(2) + model.b_O[l]
        else:
            attn_out = torch.einsum("bqhd,hdm->bqm", z, model.W_O[l]) + model.b_O[l]
        attn_out = h(b + "hook_attn_out", attn_out)
        if cfg.attn_only:
            post = attn_out if no_residual else pre + attn_out
        else:
            mid = h(b + "hook_resid_mid", attn_out if no_residual else pre + attn_out)
            mlp_in = h(b + "hook_mlp_in", mid) if cfg.use_hook_mlp_in else mid
            hid = h(b + "mlp.hook_pre", mlp_in @ model.W_in[l] + model.b_in[l])
            hid = h(b + "mlp.hook_post", act(hid))
            mlp_out = h(b + "hook_mlp_out", hid @ model.W_out[l] + model.b_out[l])
            post = mlp_out if no_residual else mid + mlp_out
        if l2 and l == cfg.n_layers - 1:
            post = post / post.norm(dim=-1, keepdim=True)
        resid = h(b + "hook_resid_post", post)
    u = h("unembed.hook_in", resid)
    return h("unembed.hook_out", u @ model.W_U + model.b_U), acts


MODELS = {
    "scan_snap": (scan_snap_config(7, n_ctx=8, init="random", dtype="float64"),
                  dict(no_self=True, no_residual=True, l2=True)),
    "rank_collapse": (rank_collapse_config(d=6, d_vocab=11, n_ctx=6, gamma=0.3, dtype="float64"),
                      dict(no_residual=True, act=torch.tanh)),
    "rank_collapse_scalar": (rank_collapse_config(d=5, d_vocab=9, head="scalar", n_ctx=6, gamma=0.3, dtype="float64"),
                             dict(no_residual=True, act=torch.tanh)),
    "small_init_lm": (small_init_lm_config(d_model=6, d_ff=10, n_layers=2, d_vocab=13, n_ctx=6, gamma=0.3,
                                           dtype="float64"), dict(act=F.gelu)),
}
FLAGS = {  # second/third pass: switch on the hook points a default config never calls
    "default": {},
    "result+split+mlp_in": {"use_attn_result": True, "use_split_qkv_input": True, "use_hook_mlp_in": True},
    "attn_in": {"use_attn_in": True},
}


def _model(name: str, flags: dict):
    cfg, arch = MODELS[name]
    model = build(cfg, generator=torch.Generator().manual_seed(3))
    for k, v in flags.items():
        if k == "use_hook_mlp_in" and model.cfg.attn_only:
            continue
        getattr(model, f"set_{k}")(v)
    g = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, model.cfg.d_vocab, (3, model.cfg.n_ctx - 1), generator=g)
    return model, arch, tokens


CASES = [(n, "default") for n in MODELS] + [("rank_collapse", "result+split+mlp_in"),
                                           ("small_init_lm", "result+split+mlp_in"), ("scan_snap", "attn_in")]


@pytest.mark.parametrize("name,flags", CASES)
def test_cache_equals_formula(name, flags):
    model, arch, tokens = _model(name, FLAGS[flags])
    logits, cache = model.run_with_cache(tokens)
    ref, acts = formula(model, tokens, {}, **arch)
    assert torch.allclose(logits, ref, atol=TOL, rtol=0)
    assert set(cache.keys()) == set(acts), set(cache.keys()) ^ set(acts)
    for k in acts:
        a, b = cache[k], acts[k]
        same_inf = torch.equal(torch.isinf(a), torch.isinf(b))
        assert same_inf and torch.allclose(a.nan_to_num(posinf=0, neginf=0), b.nan_to_num(posinf=0, neginf=0), atol=TOL), k


@pytest.mark.parametrize("name,flags", CASES)
def test_patch_every_hook_point(name, flags):
    model, arch, tokens = _model(name, FLAGS[flags])
    with torch.no_grad():
        clean, cache = model.run_with_cache(tokens)
    g = torch.Generator().manual_seed(11)
    fired = 0
    for hook_name in model.hook_dict:
        if hook_name not in cache:  # never called in this config: patching it must change nothing
            out = model.run_with_hooks(tokens, fwd_hooks=[(hook_name, lambda x, hook: torch.zeros_like(x) + 7.0)])
            assert torch.equal(out, clean), hook_name
            continue
        known = torch.randn(cache[hook_name].shape, generator=g, dtype=cache[hook_name].dtype)
        for prepend in (False, True) if flags == "default" else (False,):  # prepended user hooks are honoured too
            model.add_hook(hook_name, lambda x, hook: known.clone(), prepend=prepend)
            with torch.no_grad():
                out = model(tokens)
            model.reset_hooks()
            ref, acts = formula(model, tokens, {hook_name: known}, **arch)
            assert torch.allclose(out, ref, atol=TOL, rtol=0), (hook_name, prepend, (out - ref).abs().max())
        assert not torch.allclose(out, clean, atol=1e-4), f"{hook_name}: patch did not reach the output"
        fired += 1
    assert fired >= 12


def test_user_hook_on_attn_out_and_mlp_pre_reaches_output():
    """The regression of issue 9: a hook on blocks.0.hook_attn_out / blocks.0.mlp.hook_pre of the
    rank-collapse model was silently ignored downstream (the variant read a stash taken before it)."""
    model, arch, tokens = _model("rank_collapse", {})
    clean = model(tokens)
    for name in ("blocks.0.hook_attn_out", "blocks.0.mlp.hook_pre"):
        out = model.run_with_hooks(tokens, fwd_hooks=[(name, lambda x, hook: 2.0 * x)])
        cache = model.run_with_cache(tokens)[1]
        ref, _ = formula(model, tokens, {name: 2.0 * cache[name]}, **arch)
        assert torch.allclose(out, ref, atol=TOL) and not torch.allclose(out, clean, atol=1e-6), name


def test_gradients_flow_through_variants():
    """Training still works: the gradient of the Y/Z model's loss wrt Z equals the formula's."""
    model, arch, tokens = _model("scan_snap", {})
    Wq = model.blocks[0].attn.W_Q
    model(tokens).sum().backward()
    g_model = Wq.grad.clone()
    Wq.grad = None
    formula(model, tokens, {}, **arch)[0].sum().backward()
    assert torch.allclose(g_model, Wq.grad, atol=1e-8)
