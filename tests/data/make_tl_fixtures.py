"""Write tests/data/tl{3,4}_ckpts/ with the installed TransformerLens line (run once with .venv and once with .venv4).

A small model built the line's own way (``HookedTransformer`` on 3.x, ``TransformerBridge.boot_native`` on 4.x,
no sslens), trained 3 Adam steps by a plain loop; ``step_0.pt`` and ``step_3.pt`` are its own
``model.state_dict()`` (3.x names, or 4.x ``nn.Linear`` keys), ``config.json`` is ``cfg.to_dict()``, and
``logits.safetensors`` holds its logits on ``probe`` at both steps (tests/test_checkpoint_lines.py).

    .venv/bin/python tests/data/make_tl_fixtures.py && .venv4/bin/python tests/data/make_tl_fixtures.py
"""

import json
import sys
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent.parent))
from machine import write_fingerprint  # noqa: E402

FIELDS = dict(n_layers=2, d_model=8, d_head=4, n_heads=2, d_mlp=16, d_vocab=12, n_ctx=6, act_fn="gelu",
              normalization_type="LN", seed=0)


def build():
    if version("transformer-lens").startswith("3."):
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        return HookedTransformer(HookedTransformerConfig(**FIELDS, device="cpu"))
    from transformer_lens import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.model_bridge.sources import native  # noqa: F401  (attaches boot_native)

    return TransformerBridge.boot_native(TransformerBridgeConfig(**FIELDS, device="cpu"))


def main() -> None:
    major = version("transformer-lens").split(".")[0]
    out = Path(__file__).parent / f"tl{major}_ckpts"
    out.mkdir(exist_ok=True)
    torch.manual_seed(0)
    model = build()
    probe = torch.randint(0, 12, (2, 6), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    g = torch.Generator().manual_seed(2)
    logits = {}
    for step in range(4):
        if step in (0, 3):
            torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out / f"step_{step}.pt")
            with torch.no_grad():
                logits[f"step_{step}"] = model(probe).contiguous()
        loss = model(torch.randint(0, 12, (8, 6), generator=g), return_type="loss")
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_file({**logits, "probe": probe}, out / "logits.safetensors")
    (out / "config.json").write_text(json.dumps(model.cfg.to_dict(), default=str, indent=0) + "\n")
    write_fingerprint(out)
    print(out, sorted(p.name for p in out.iterdir()), f"TransformerLens {version('transformer-lens')}")


if __name__ == "__main__":
    main()
