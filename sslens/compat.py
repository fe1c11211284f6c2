"""The one module that knows which TransformerLens line is installed (docs/design.md, "Two TransformerLens lines").

TransformerLens 3.x models are ``HookedTransformer``; 4.x removed it for ``TransformerBridge`` (a wrapper
around ``nn.Linear`` modules). Everything else in sslens speaks 3.x names and layouts
(``blocks.0.attn.W_Q`` ``[head, d_model, d_head]``); this module translates:

- :data:`TL_MAJOR`, :func:`model_class`, :func:`is_hooked_model`: which line, which model type;
- :func:`build_from_config`: a model from ``HookedTransformerConfig`` fields (``boot_native`` on 4.x);
  :func:`config_fields`: either line's ``cfg.to_dict()`` as the installed line's fields;
  :func:`from_pretrained`: a pretrained model's training checkpoint;
- :func:`attn_scale` / :func:`set_attn_scale`: the number attention scores are divided by;
- :func:`params` (3.x name -> tensor in 3.x layout; a writable view on 4.x), :func:`leaves` (3.x name ->
  the real ``nn.Parameter``), :func:`grads`, :func:`name_map` (3.x name -> ``named_parameters`` name);
- :func:`state_dict_3x` / :func:`load_state_dict_3x`: state dicts in 3.x names and layouts on both lines;
  :func:`state_dict_to_3x`: a state dict of either line (4.x ``nn.Linear`` keys) in 3.x names and layouts;
- :func:`mask_attention`: exclude (query, key) pairs from attention (on ``hook_attn_scores`` in 3.x;
  4.x's ``hook_attn_scores`` holds the pattern and discards edits, so there ``hook_pattern`` is masked
  and renormalised, the same softmax over the remaining keys).

The line is read from the installed distribution (``importlib.metadata``): on 4.x even
``hasattr(transformer_lens, "HookedTransformer")`` raises.
"""

from __future__ import annotations

import math
import warnings
from importlib.metadata import version as _dist_version
from typing import Any, Callable

import einops
import torch
from torch import Tensor

TL_VERSION: str = _dist_version("transformer-lens")
TL_MAJOR: int = int(TL_VERSION.split(".")[0])
#: whether edits at ``hook_attn_scores`` reach the softmax: 3.x; 4.x's hook holds the pattern and discards edits
SCORES_EDITABLE: bool = TL_MAJOR < 4


def model_class() -> type:
    """``HookedTransformer`` on 3.x, ``TransformerBridge`` on 4.x."""
    if TL_MAJOR < 4:
        from transformer_lens import HookedTransformer

        return HookedTransformer
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge


def is_hooked_model(obj: Any) -> bool:
    """Whether ``obj`` is a model of the installed line (the kind the recorder attaches to)."""
    return isinstance(obj, model_class())


def __getattr__(name: str) -> Any:
    # ``from sslens.compat import HookedModel``: the installed line's model class (for annotations).
    if name == "HookedModel":
        return model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- building ---------------------------------------------------------------------------------------
def build_from_config(cfg: dict) -> Any:
    """A model from ``HookedTransformerConfig`` fields (``boot_native`` on 4.x).

    ``HookedTransformer(cfg)`` on 3.x, ``TransformerBridge.boot_native(TransformerBridgeConfig(...))`` on 4.x.

    On 4.x ``use_attn_scale=False`` / ``attn_scale`` are applied after booting (4.3 ignores the first
    and refuses ``attn_scale=1.0``); ``model_name`` becomes ``boot_native``'s name.
    """
    cfg = dict(cfg)
    if TL_MAJOR < 4:
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.x deprecates HookedTransformer; built on purpose
            return HookedTransformer(HookedTransformerConfig(**cfg))
    from transformer_lens import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.model_bridge.sources import native  # noqa: F401  (attaches boot_native)

    use_scale = cfg.pop("use_attn_scale", True)
    scale = cfg.pop("attn_scale", -1.0)
    name = cfg.pop("model_name", "native")
    cfg.setdefault("act_fn", "relu")
    if cfg.get("act_fn") is None:  # attn-only 3.x configs say act_fn=None; 4.x wants a name
        cfg["act_fn"] = "relu"
    # boot_native builds in float32 on the default device unless told: pass the config's dtype and device
    model = TransformerBridge.boot_native(TransformerBridgeConfig(**cfg), model_name=name, dtype=cfg.get("dtype"),
                                          device=cfg.get("device"))
    if not use_scale:
        set_attn_scale(model, 1.0)
    elif scale is not None and scale > 0:
        set_attn_scale(model, float(scale))
    return model


def config_class() -> type:
    """``HookedTransformerConfig`` on 3.x, ``TransformerBridgeConfig`` on 4.x."""
    if TL_MAJOR < 4:
        from transformer_lens import HookedTransformerConfig

        return HookedTransformerConfig
    from transformer_lens import TransformerBridgeConfig

    return TransformerBridgeConfig


def config_fields(fields: dict) -> dict:
    """The fields of ``fields`` (``cfg.to_dict()`` of either line) that the installed line's config takes.

    Checked by building that config (TypeError/ValueError/AssertionError as its constructor raises them).
    The result is what :func:`build_from_config` takes; a 3.x ``cfg.to_dict()`` builds a 4.x model and the
    other way round (line-only fields such as 4.x's ``architecture`` are dropped).
    """
    import dataclasses

    cls = config_class()
    names = {f.name for f in dataclasses.fields(cls)}
    out = {k: v for k, v in fields.items() if k in names and k != "architecture"}
    if TL_MAJOR < 4:
        if out.get("default_padding_side", "right") is None:  # 4.x writes None; 3.x wants a side
            out.pop("default_padding_side")
        cls(**out)
    else:
        probe = {k: v for k, v in out.items() if k not in ("use_attn_scale", "attn_scale", "model_name")}
        if probe.get("act_fn", "relu") is None:
            probe["act_fn"] = "relu"
        cls(**probe)
    return out


def official_model_name(name: str) -> str:
    """TransformerLens's official name for ``name`` (an alias such as ``pythia-14m``); ``ValueError`` if unknown."""
    if TL_MAJOR < 4:
        from transformer_lens.loading_from_pretrained import get_official_model_name
    else:
        from transformer_lens.supported_models import get_official_model_name
    return get_official_model_name(name)


def checkpoint_labels(repo: str) -> list[int]:
    """TransformerLens's checkpoint labels (training steps) of ``repo``; ``checkpoint_index`` indexes them."""
    if TL_MAJOR < 4:
        from transformer_lens.loading_from_pretrained import get_checkpoint_labels
    else:
        from transformer_lens.tools.model_registry.checkpoints import get_checkpoint_labels
    return list(get_checkpoint_labels(repo)[0])


def from_pretrained(name: str, checkpoint_index: int, device: str = "cpu") -> Any:
    """Training checkpoint ``checkpoint_index`` of a pretrained model, weights as trained (no processing).

    ``HookedTransformer.from_pretrained`` on 3.x with ``fold_ln``/``center_writing_weights``/``center_unembed``/
    ``fold_value_biases`` off, ``TransformerBridge.boot_transformers`` on 4.x (raw HF weights): the same weights on both lines.
    """
    if TL_MAJOR < 4:
        from transformer_lens import HookedTransformer

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return HookedTransformer.from_pretrained(name, checkpoint_index=checkpoint_index, device=device, fold_ln=False,
                                                     center_writing_weights=False, center_unembed=False,
                                                     fold_value_biases=False)
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(official_model_name(name), checkpoint_index=checkpoint_index, device=device)


def _attn_module(model: Any, layer: int) -> Any:
    return model.blocks[layer].attn._original_component


def attn_scale(model: Any, layer: int = 0) -> float:
    """The number layer ``layer``'s attention scores are divided by (sqrt(d_head), or 1 without scaling)."""
    if TL_MAJOR < 4:
        return float(model.blocks[layer].attn.attn_scale)
    return float(_attn_module(model, layer).scale)


def set_attn_scale(model: Any, scale: float) -> None:
    """Divide every layer's attention scores by ``scale`` (1.0: no scaling, as ``use_attn_scale=False``)."""
    for l, block in enumerate(model.blocks):
        if TL_MAJOR < 4:
            block.attn.attn_scale = float(scale)
            model.cfg.use_attn_scale = not math.isclose(scale, 1.0)
        else:
            _attn_module(model, l).scale = float(scale)


# -- parameter names and layouts ---------------------------------------------------------------------
# 4.x state-dict key (suffix after the module path) -> 3.x name suffix and a view 4.x layout -> 3.x layout.
# The inverse of transformer_lens.utilities.tl_checkpoint_conversion (tests/test_compat.py checks it).
def _heads(t: Tensor, n: int) -> Tensor:  # [(n d_head), d_model] -> [n, d_model, d_head]
    return einops.rearrange(t, "(n h) m -> n m h", n=n)


def _to3(key: str, t: Tensor, cfg: Any) -> tuple[str, Tensor]:
    """The 3.x name of a 4.x state-dict key and ``t`` viewed in the 3.x layout."""
    H = cfg.n_heads
    KV = getattr(cfg, "n_key_value_heads", None) or H
    gqa = "_" if KV != H else ""
    mod, _, leaf = key.rpartition(".")
    base, _, sub = mod.rpartition(".")
    if mod == "embed":
        return "embed.W_E", t
    if mod == "pos_embed":
        return "pos_embed.W_pos", t
    if mod == "unembed":
        return ("unembed.W_U", t.T) if leaf == "weight" else ("unembed.b_U", t)
    if base.endswith(".attn") and sub in ("q", "k", "v", "o"):
        n = H if sub in ("q", "o") else KV
        if sub == "o":
            return (f"{base}.W_O", einops.rearrange(t, "m (n h) -> n h m", n=H)) if leaf == "weight" else (f"{base}.b_O", t)
        X = sub.upper()
        pre = gqa if sub in ("k", "v") else ""
        if leaf == "weight":
            return f"{base}.{pre}W_{X}", _heads(t, n)
        return f"{base}.{pre}b_{X}", einops.rearrange(t, "(n h) -> n h", n=n)
    if base.endswith(".mlp") and sub in ("in", "out", "gate"):
        return (f"{base}.W_{sub}", t.T) if leaf == "weight" else (f"{base}.b_{sub}", t)
    if sub.startswith("ln"):
        return f"{mod}.{'w' if leaf == 'weight' else 'b'}", t
    raise KeyError(f"sslens.compat: no 3.x name for TransformerBridge key {key!r}")


def _bridge_entries(model: Any) -> dict[str, tuple[str, Tensor]]:
    """3.x name -> (4.x state-dict key, the 4.x tensor itself: an ``nn.Parameter`` or a buffer)."""
    out = {}
    for key, t in model.state_dict(keep_vars=True).items():
        name, _ = _to3(key, t.detach(), model.cfg)
        out[name] = (key, t)
    return out


_ORDER = ["embed.W_E", "pos_embed.W_pos", "ln1.w", "ln1.b", "ln2.w", "ln2.b", "W_Q", "W_O", "b_Q", "b_O", "W_K", "W_V",
          "b_K", "b_V", "W_in", "b_in", "W_gate", "b_gate", "W_out", "b_out", "ln_final.w", "ln_final.b", "unembed.W_U",
          "unembed.b_U"]


def _order(name: str) -> tuple:
    """HookedTransformer's ``named_parameters`` order (init draws follow it on both lines)."""
    parts = name.split(".")
    layer = int(parts[1]) if parts[0] == "blocks" else (-1 if parts[0] in ("embed", "pos_embed") else 10**9)
    leaf = parts[-1].lstrip("_")
    key = ".".join(parts[-2:]) if parts[-2].startswith("ln") or parts[0] != "blocks" else leaf
    return layer, _ORDER.index(key) if key in _ORDER else len(_ORDER)


def params(model: Any, buffers: bool = True) -> dict[str, Tensor]:
    """3.x name -> tensor in the 3.x layout, in HookedTransformer's order.

    3.x: the parameters themselves. 4.x: views of the bridge's parameters (in-place writes under
    ``torch.no_grad()`` change the model), plus the ``unembed.b_U`` buffer when ``buffers``.
    """
    if TL_MAJOR < 4:
        return dict(model.named_parameters())
    out = {}
    for name, (key, t) in _bridge_entries(model).items():
        if not buffers and not isinstance(t, torch.nn.Parameter):
            continue
        out[name] = _to3(key, t, model.cfg)[1]
    return dict(sorted(out.items(), key=lambda kv: _order(kv[0])))


def leaves(model: Any) -> dict[str, torch.nn.Parameter]:
    """3.x name -> the real ``nn.Parameter`` holding it (for ``requires_grad_``, optimizers, ``.grad``)."""
    if TL_MAJOR < 4:
        return dict(model.named_parameters())
    ent = _bridge_entries(model)
    return {n: ent[n][1] for n in sorted(ent, key=_order) if isinstance(ent[n][1], torch.nn.Parameter)}


def grads(model: Any) -> dict[str, Tensor | None]:
    """3.x name -> the gradient in the 3.x layout (``None`` where there is none)."""
    if TL_MAJOR < 4:
        return {n: p.grad for n, p in model.named_parameters()}
    out = {}
    for name, (key, t) in _bridge_entries(model).items():
        if isinstance(t, torch.nn.Parameter):
            out[name] = None if t.grad is None else _to3(key, t.grad, model.cfg)[1]
    return dict(sorted(out.items(), key=lambda kv: _order(kv[0])))


def name_map(model: Any) -> dict[str, str]:
    """3.x name -> the name ``model.named_parameters()`` gives the parameter holding it (identity on 3.x)."""
    if TL_MAJOR < 4:
        return {n: n for n, _ in model.named_parameters()}
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {n: by_id[id(p)] for n, p in leaves(model).items()}


def state_dict_3x(model: Any) -> dict[str, Tensor]:
    """Every parameter (and 4.x's ``unembed.b_U`` buffer) in 3.x names and layouts, detached and contiguous."""
    return {n: t.detach().contiguous() for n, t in params(model).items()}


def layout_3x(model: Any, name: str, t: Tensor) -> Tensor:
    """``t`` shaped like the parameter holding 3.x ``name`` (e.g. its Adam ``exp_avg``) in the 3.x layout."""
    if TL_MAJOR < 4:
        return t
    key = _bridge_entries(model)[name][0]
    return _to3(key, t, model.cfg)[1].contiguous()


def layout_native(model: Any, name: str, t: Tensor) -> Tensor:
    """The inverse of :func:`layout_3x`: a 3.x-layout tensor shaped like the installed line's parameter."""
    if TL_MAJOR < 4:
        return t
    return next(iter(to_bridge_state_dict({name: t}, model.cfg).values())).contiguous()


def to_bridge_state_dict(sd: dict[str, Tensor], cfg: Any) -> dict[str, Tensor]:
    """A 3.x state dict in 4.x keys and layouts (``convert_tl_checkpoint``); 4.x only."""
    from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint

    return convert_tl_checkpoint(sd, cfg)


def is_bridge_state_dict(sd: dict[str, Tensor]) -> bool:
    """Whether ``sd`` uses 4.x ``nn.Linear`` keys (``embed.weight``, ``blocks.0.attn.q.weight``) rather than 3.x names."""
    return any(k == "embed.weight" or k.endswith((".attn.q.weight", ".mlp.in.weight")) for k in sd)


def state_dict_to_3x(sd: dict[str, Tensor], cfg: Any) -> dict[str, Tensor]:
    """A state dict of either line in 3.x names and layouts (a 3.x one is returned as it is); on both lines.

    ``cfg`` gives ``n_heads`` (and ``n_key_value_heads``), e.g. the model's ``cfg``. A 4.x key with no 3.x
    name raises ``KeyError`` naming it.
    """
    if not is_bridge_state_dict(sd):
        return dict(sd)
    return dict(_to3(k, t, cfg) for k, t in sd.items())


def load_state_dict_3x(model: Any, sd: dict[str, Tensor], strict: bool = True) -> None:
    """Load a 3.x-named state dict into ``model`` (converted on 4.x); 3.x buffers (mask, IGNORE) are ignored."""
    sd = {k: v for k, v in sd.items() if not k.endswith((".mask", ".IGNORE"))}
    if TL_MAJOR < 4:
        model.load_state_dict(sd, strict=strict)
        return
    missing = set(params(model)) - set(sd)
    if strict and missing:
        raise KeyError(f"sslens.compat: state dict lacks {sorted(missing)[:5]}")
    with torch.no_grad():
        own = params(model)
        for name, t in sd.items():
            if name not in own:
                if strict:
                    raise KeyError(f"sslens.compat: unexpected key {name!r}")
                continue
            own[name].copy_(t)


def set_mlp_activation(model: Any, fn: Callable[[Tensor], Tensor]) -> None:
    """Make ``fn`` every MLP's activation (between ``hook_pre`` and ``hook_post``).

    ``mlp.act_fn`` on 3.x, the native module's ``act`` on 4.x.
    """
    for block in model.blocks:
        if TL_MAJOR < 4:
            block.mlp.act_fn = fn
        else:
            block.mlp._original_component.act = fn


# -- attention masking -------------------------------------------------------------------------------
MaskFn = Callable[[int, int, torch.device], Tensor]


def mask_attention(model: Any, mask: MaskFn) -> None:
    """Permanently exclude (query, key) pairs: ``mask(q, k, device)`` -> bool ``[q, k]``, True = excluded.

    Applied to the value *entering* the hook point (a forward pre-hook, like TransformerLens's causal mask), so
    every user hook there sees the masked value and a patched value is used as given. 3.x: scores set to -inf
    on ``hook_attn_scores``. 4.x: ``hook_pattern`` entries set to 0 and each row renormalised (the same softmax
    over the remaining keys; 4.x's ``hook_attn_scores`` holds the pattern and discards edits).
    """

    def on_scores(module: Any, args: tuple) -> tuple:
        scores = args[0]
        return (scores.masked_fill(mask(*scores.shape[-2:], scores.device), float("-inf")),)

    def on_pattern(module: Any, args: tuple) -> tuple:
        pattern = args[0]
        kept = pattern.masked_fill(mask(*pattern.shape[-2:], pattern.device), 0.0)
        return (kept / kept.sum(dim=-1, keepdim=True),)

    for block in model.blocks:
        if TL_MAJOR < 4:
            block.attn.hook_attn_scores.register_forward_pre_hook(on_scores)
        else:
            block.attn.hook_pattern.register_forward_pre_hook(on_pattern)
