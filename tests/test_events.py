"""Events (change points), head labels and composition edges: known answers and a real induction run (issue 22)."""

import json
import math
import warnings

import pytest
import torch

from sslens.analyses.events import change_points
from sslens.schedule import log_schedule


def test_a_step_is_one_event_between_the_recorded_steps_around_it():
    g = torch.Generator().manual_seed(0)
    for steps in (log_schedule(1000), list(range(0, 1001, 40))):
        y = torch.where(torch.tensor(steps) < 500, 1.0, 0.2).double() + 0.002 * torch.randn(len(steps), generator=g,
                                                                                             dtype=torch.float64)
        ev = change_points(steps, y)
        assert len(ev) == 1, ev
        e = ev[0]
        i = max(j for j, s in enumerate(steps) if s < 500)
        assert (e["start"], e["end"]) == (steps[i], steps[i + 1])  # the jump lies between these two recordings
        assert e["before"] == pytest.approx(1.0, abs=0.01) and e["after"] == pytest.approx(0.2, abs=0.01)
        assert isinstance(e["start"], int) and isinstance(e["end"], int)


def test_a_sigmoid_transition_is_one_event_spanning_it():
    steps = list(range(0, 2001, 25))
    y = [1 / (1 + math.exp(-(s - 1200) / 40)) for s in steps]
    (e,) = change_points(steps, y)
    assert 1000 < e["start"] < 1200 < e["end"] < 1400 and e["after"] - e["before"] > 0.8


@pytest.mark.parametrize("seed", range(5))
def test_smooth_and_noise_only_series_have_no_event(seed):
    g = torch.Generator().manual_seed(seed)
    steps = log_schedule(2000)
    s = torch.tensor(steps, dtype=torch.float64)
    noise = 0.01 * torch.randn(len(steps), generator=g, dtype=torch.float64)
    assert change_points(steps, 1 + s / 2000 + noise) == []  # a straight line on a log-spaced schedule
    assert change_points(steps, torch.sqrt(s)) == []  # concave growth
    u = torch.arange(0, 2001, 50, dtype=torch.float64)
    assert change_points(u.long().tolist(), torch.cos(2 * math.pi * u / 2000)) == []  # one slow period
    assert change_points(steps, noise) == []  # noise around a constant


def test_float_jitter_and_repeated_steps_are_no_event():
    y = [2.0] * 10
    y[5] = 2.0 + 1e-9  # below float32 resolution: no change
    assert change_points(list(range(10)), y) == []
    steps = [0, 1, 2, 3, 3, 4, 5, 6]  # step 3 recorded twice (a resumed run): its last value, never start == end
    ev = change_points(steps, [1.0, 1.01, 0.99, 1.0, 5.0, 5.0, 5.01, 4.99])
    assert all(e["start"] < e["end"] for e in ev)


def oracle_run(tmp_path):
    """A 2-layer attention-only model trained by transformer_lens.train on repeated random tokens, recorded the
    README way; the oracle: plain TransformerLens in-context loss every 10 steps and previous-token scores."""
    from torch.optim.optimizer import register_optimizer_step_post_hook
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.train import HookedTransformerTrainConfig, train

    from sslens.hooks import CircuitRecorder

    V, P, N, STEPS = 64, 16, 16, 400
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(HookedTransformerConfig(n_layers=2, n_heads=4, d_model=64, d_head=16, d_vocab=V,
                                                          n_ctx=2 * P, attn_only=True, normalization_type=None, seed=0,
                                                          device="cpu"))
    half = torch.randint(0, V, (STEPS * N, P), generator=torch.Generator().manual_seed(1))
    data = [{"tokens": t} for t in torch.cat([half, half], 1)]
    h = torch.randint(0, V, (64, P), generator=torch.Generator().manual_seed(9))
    probe = torch.cat([h, h], 1)

    def prev_scores():
        _, cache = model.run_with_cache(probe)
        q = torch.arange(1, 2 * P)
        return torch.stack([cache["pattern", l][:, :, q, q - 1].mean((0, 2)) for l in range(2)])  # [layer, head]

    prev0 = prev_scores()
    in_context, count = {}, [0]

    def hook(opt, args, kwargs):
        count[0] += 1
        if count[0] % 10 == 0:
            with torch.no_grad():
                nll = model(probe, return_type="loss", loss_per_token=True)
            in_context[count[0]] = nll[:, P:].mean().item()

    handle = register_optimizer_step_post_hook(hook)
    rec = CircuitRecorder(model, store=tmp_path / "run", total_steps=STEPS, verbose=False).attach()
    try:
        train(model, HookedTransformerTrainConfig(num_epochs=1, batch_size=N, lr=3e-3, print_every=None, device="cpu"),
              data)
    finally:
        handle.remove()
        rec.detach()
    steps = sorted(in_context)
    drops = [in_context[a] - in_context[b] for a, b in zip(steps, steps[1:])]
    i = max(range(len(drops)), key=drops.__getitem__)
    return tmp_path / "run", (steps[i] + steps[i + 1]) / 2, prev0, prev_scores()


def test_a_real_induction_run_gives_loss_and_induction_events_and_labels(tmp_path):
    from sslens.cli import main
    from sslens.hooks import Recording

    run, drop, prev0, prev1 = oracle_run(tmp_path)
    assert 100 < drop < 350  # the oracle's in-context loss drop (steepest 10-step decrease)
    assert main(["analyze", str(run), "--quiet"]) == 0
    m = json.loads((run / "metrics.json").read_text())

    def at_drop(e):
        return e["start"] <= drop <= e["end"]

    events = m["events"]
    assert all(set(e) == {"metric", "layer", "head", "start", "end", "before", "after"} for e in events)
    loss = [e for e in events if e["metric"] in ("loss", "loss_in_context") and at_drop(e)]
    assert loss and all(e["layer"] is None and e["head"] is None and e["after"] < e["before"] for e in loss)
    ind = [e for e in events if e["metric"] == "induction" and e["layer"] == 1 and at_drop(e)]
    assert ind and all(e["after"] > e["before"] for e in ind)
    heads = m["heads"]
    assert len({h["head"] for h in heads if h["label"] == "induction" and h["layer"] == 1}) >= 2
    for h in heads:
        assert h["score"] > h["baseline"]
        if h["label"] == "previous_token":  # only a head the oracle sees as one (its score rose well above init)
            assert prev1[h["layer"], h["head"]] > prev0[h["layer"], h["head"]] + 0.1, h
    df = Recording(run).to_pandas()
    assert "loss" in set(df.metric) and "loss_in_context" in set(df.metric)
    assert (df[df.metric == "loss"]["layer"].isna()).all()
    html = (run / "report.html").read_text()
    assert html.index("timeline of events") < html.index("QK = W_Q W_K^T")  # the report opens with the timeline
