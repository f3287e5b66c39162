"""The brain-inspired mechanisms: generic checks every registered mechanism must pass, then the
behaviour of each one in both twins."""
import pytest
import torch

from spiking_attn import MECHANISMS, ModelConfig, SpikeRecorder, build_model, load_model, spike_driven_report, train
from spiking_attn.mechanisms import mechanism_names
from spiking_attn.data import load_digits_tokens, make_quadrant_task
from spiking_attn.errors import ShapeError, SpikingAttnError
from spiking_attn.mechanisms.thalamic_gating import DenseThalamicGating, SpikingThalamicGating

BUILT_IN = [name for name in mechanism_names("classifier") if name != "none"]  # seq2seq: its own tests below
SMALL = dict(in_features=6, num_tokens=5, num_classes=3, dim=16, depth=1, heads=2, timesteps=3, num_cues=4)


def _models(name, **extra):
    spiking = build_model(ModelConfig(**SMALL, mechanism=name, **extra))
    dense = build_model(ModelConfig(**SMALL, mechanism=name, model="dense", **extra))
    return spiking, dense


def _inputs(batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 5, 6, generator=g), torch.randint(4, (batch,), generator=g)


@pytest.mark.parametrize("name", BUILT_IN)
def test_twins_share_parameter_names_and_shapes(name):
    spiking, dense = _models(name)
    assert {n: p.shape for n, p in spiking.named_parameters()} == {n: p.shape for n, p in dense.named_parameters()}


@pytest.mark.parametrize("name", BUILT_IN)
@pytest.mark.parametrize("attention", ["ssa", "sdsa"])
def test_spiking_version_is_spike_driven(name, attention):
    spiking, _ = _models(name, attention=attention)
    x, cue = _inputs()
    assert spike_driven_report(spiking, x, cue=cue).non_binary == ["embed.linear"]


@pytest.mark.parametrize("name", BUILT_IN)
@pytest.mark.parametrize("kind", ["spiking", "dense"])
def test_shapes_and_gradients_reach_every_parameter(name, kind):
    spiking, dense = _models(name)
    model = spiking if kind == "spiking" else dense
    x, cue = _inputs(8)
    logits = model(x, cue=cue)
    assert logits.shape == (8, 3)
    logits.pow(2).sum().backward()
    readouts = MECHANISMS.get(name).readouts
    params = [(n, p) for n, p in model.named_parameters() if not any(r in n for r in readouts)]
    missing = [n for n, p in params if p.grad is None]
    assert missing == []
    silent = [n for n, p in params if float(p.grad.abs().sum()) == 0]
    assert len(silent) <= len(params) // 10, silent  # a few dead units at random init at most


@pytest.mark.parametrize("name", BUILT_IN)
def test_no_state_leaks_between_batches(name):
    spiking, dense = _models(name)
    for model in (spiking.eval(), dense.eval()):
        x, cue = _inputs(4)
        with torch.no_grad():
            first = model(x, cue=cue)
            model(torch.rand(7, 5, 6), cue=torch.randint(4, (7,)))  # another batch, another size
            assert torch.equal(model(x, cue=cue), first)
            assert torch.allclose(model(x[:2], cue=cue[:2]), first[:2], atol=1e-6)  # batch composition too


@pytest.mark.parametrize("name", BUILT_IN)
def test_bad_input_is_refused(name):
    spiking, _ = _models(name)
    x, cue = _inputs()
    with pytest.raises(ShapeError, match="rank"):
        spiking(x[0], cue=cue)
    with pytest.raises(ShapeError, match="vector cue"):
        spiking(x, cue=torch.rand(4, 3))
    with pytest.raises(SpikingAttnError, match=r"cue indices must lie in \[0, 4\)"):
        spiking(x, cue=torch.tensor([0, 1, 2, 9]))


@pytest.mark.parametrize("name", BUILT_IN)
def test_checkpoints_save_load_and_resume(name, tmp_path):
    kw = dict(task="cue", mechanism=name, dim=16, depth=1, heads=2, timesteps=2, progress=False, figures=False)
    part = train(**kw, epochs=2, stop_after=1, out=tmp_path / "run")
    assert part["completed"] is False
    done = train(task="cue", resume=tmp_path / "run", progress=False, figures=False)
    straight = train(**kw, epochs=2, out=tmp_path / "straight")
    assert done["history"] == straight["history"]
    model = load_model(tmp_path / "run" / "checkpoint.pt")
    assert model.config.mechanism == name


# --- thalamic gating ------------------------------------------------------------------------------


def _routed_seen_by_out(attn, run):
    """The input of ``attn.attn.out`` (the gated routed heads) during ``run()``."""
    seen = []
    handle = attn.attn.out.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        run()
    finally:
        handle.remove()
    return seen[0]


def test_spiking_closed_gate_silences_its_head():
    torch.manual_seed(0)
    gating = SpikingThalamicGating(16, 4, "ssa", num_cues=4).eval()
    with torch.no_grad():
        for name in ("q", "k", "v"):
            getattr(gating.attn, name).linear.weight.mul_(6.0)  # so that the heads route spikes
        gating.gate.bias.copy_(torch.tensor([5.0, 5.0, 5.0, -5.0]))  # head 3 closed, the others open
    x = (torch.rand(3, 2, 6, 16) < 0.4).float()
    cue = torch.zeros(3, 2, 4)
    routed = _routed_seen_by_out(gating, lambda: gating(x, cue=cue))  # [T, B, N, D]
    heads = routed.reshape(3, 2, 6, 4, 4)
    assert heads[..., 3, :].sum() == 0  # the closed head passes no spike
    assert heads[..., :3, :].sum() > 0
    _, gates = gating(x, cue=cue, return_gates=True)
    assert gates.shape == (3, 2, 4) and gates[..., 3].sum() == 0 and gates[..., :3].min() == 1


def test_dense_closed_gate_silences_its_head():
    gating = DenseThalamicGating(16, 4, "softmax", num_cues=4).eval()
    with torch.no_grad():
        gating.gate.bias.copy_(torch.tensor([5.0, 5.0, 5.0, -50.0]))
    x = torch.randn(2, 6, 16)
    routed = _routed_seen_by_out(gating, lambda: gating(x, cue=torch.zeros(2, 4)))
    assert routed.reshape(2, 6, 4, 4)[..., 3, :].abs().max() < 1e-12
    _, gates = gating(x, cue=torch.zeros(2, 4), return_gates=True)
    assert gates.shape == (2, 4) and bool(((gates > 0) & (gates < 1)).all())


@pytest.mark.parametrize("kind", ["spiking", "dense"])
def test_gates_differ_by_cue(kind):
    torch.manual_seed(1)
    model = build_model(ModelConfig(**{**SMALL, "heads": 4}, mechanism="thalamic", model=kind)).eval()
    gating = model.blocks[0].attn
    with torch.no_grad():  # a controller wired so that cue i excites hidden unit i, which drives head i
        gating.controller_in.weight.copy_(torch.eye(32, 4) * 4.0)
        gating.controller_in.bias.zero_()
        gating.controller_out.weight.copy_(torch.eye(4, 32) * 4.0 - 1.0)
        gating.controller_out.bias.zero_()
    x, _ = _inputs(4)
    captured = []
    original = gating.gates
    gating.gates = lambda cue, like: captured.append(original(cue, like)) or captured[-1]
    with torch.no_grad():
        model(x, cue=torch.tensor([0, 1, 2, 3]))
    gates = captured[0]  # [T, B, H] spikes or [B, H]
    per_sample = gates.mean(0) if kind == "spiking" else gates
    assert torch.equal(per_sample.argmax(1), torch.tensor([0, 1, 2, 3]))  # cue i opens head i most


def test_spiking_gate_firing_is_recorded():
    model = build_model(ModelConfig(**SMALL, mechanism="thalamic"))
    x, cue = _inputs()
    with SpikeRecorder(model) as rec, torch.no_grad():
        model(x, cue=cue)
    assert rec.spikes["blocks.0.attn.gate"].shape == (3, 4, 2)  # [T, B, H]
    assert "blocks.0.attn.controller_lif" in rec.spikes


# --- the quadrant task ------------------------------------------------------------------------------


def test_quadrant_task_label_is_the_digit_in_the_cued_quadrant():
    data = make_quadrant_task(num_train=200, num_test=50, seed=4)
    assert data.x_train.shape == (200, 16, 16) and data.num_cues == 4 and data.num_classes == 10
    digits = load_digits_tokens()
    for i in range(20):
        q = int(data.cue_test[i])
        row, col = divmod(q, 2)
        patch = data.x_test[i, 8 * row:8 * row + 8, 8 * col:8 * col + 8]
        match = ((digits.x_test - patch).abs().flatten(1).sum(1) == 0).nonzero().flatten()
        assert len(match) >= 1 and int(digits.y_test[match[0]]) == int(data.y_test[i])
        # four digits of four different classes
        quads = [data.x_test[i, 8 * r:8 * r + 8, 8 * c:8 * c + 8] for r in (0, 1) for c in (0, 1)]
        labels = {int(digits.y_test[((digits.x_test - p).abs().flatten(1).sum(1) == 0).nonzero()[0]]) for p in quads}
        assert len(labels) == 4
    again = make_quadrant_task(num_train=200, num_test=50, seed=4)
    assert torch.equal(again.x_train, data.x_train) and torch.equal(again.cue_test, data.cue_test)
    assert data.without_cue().context("train") == {} and data.without_cue().num_cues == 0


# --- pulvinar synchronization ------------------------------------------------------------------------

from spiking_attn.mechanisms.pulvinar import DensePulvinarSync, SpikingPulvinarSync  # noqa: E402


def test_dense_routing_rows_sum_to_one():
    pulvinar = DensePulvinarSync(16, areas=4).eval()
    _, route = pulvinar(torch.randn(3, 6, 16), return_routing=True)
    assert route.shape == (3, 4, 4)
    torch.testing.assert_close(route.sum(-1), torch.ones(3, 4))


def test_spiking_routes_pass_spikes_only_in_coincidence():
    torch.manual_seed(0)
    pulvinar = SpikingPulvinarSync(16, areas=4).eval()
    x = (torch.rand(4, 2, 6, 16) < 0.4).float()
    out, rates = pulvinar(x, return_routing=True)
    assert rates.shape == (2, 4, 4) and float(rates.detach().min()) >= 0 and float(rates.detach().max()) <= 1
    with torch.no_grad():
        pulvinar.route.bias.fill_(-100.0)  # every route closed
    closed = pulvinar(x)
    with torch.no_grad():  # with no route open, nothing the areas do reaches the output
        for proj in pulvinar.area_proj:
            proj.linear.weight.mul_(-3.0)
    assert torch.equal(pulvinar(x), closed)
    seen = []
    pulvinar.sync_lif.register_forward_hook(lambda _m, args, out: seen.append(out))
    pulvinar(x)
    assert seen[0].sum() == 0  # the synchronising populations stay silent


# --- basal-forebrain modulation ----------------------------------------------------------------------

from spiking_attn.mechanisms.basal_forebrain import DenseBasalForebrain, SpikingBasalForebrain  # noqa: E402


def test_dense_arousal_sets_gains_and_thresholds():
    torch.manual_seed(0)
    bf = DenseBasalForebrain(16, 2, "softmax", states=3).eval()
    x = torch.cat([torch.randn(1, 6, 16), torch.randn(1, 6, 16) * 4 + 2])  # two inputs, two arousal levels
    _, parts = bf(x, return_components=True)
    p = parts["arousal"]
    torch.testing.assert_close(p.sum(-1), torch.ones(2))
    assert not torch.allclose(p[0], p[1])
    torch.testing.assert_close(parts["gain"], 1 + 0.5 * torch.tanh(p @ bf.state_gain))
    torch.testing.assert_close(parts["shift"], p @ bf.state_threshold)
    assert not torch.allclose(parts["gain"][0], parts["gain"][1])
    assert parts["plasticity"].shape == (2, 1) and bool(((parts["plasticity"] > 0) & (parts["plasticity"] < 1)).all())


def test_spiking_arousal_state_modulates_the_populations():
    torch.manual_seed(0)
    bf = SpikingBasalForebrain(16, 2, "ssa", states=3).eval()
    with torch.no_grad():
        bf.arousal_state.bias.copy_(torch.tensor([5.0, -5.0, -5.0]))  # state 0 wins at every step
    seen = {}
    bf.attn.q_lif.register_forward_hook(lambda _m, args, kwargs, out: seen.update(kwargs), with_kwargs=True)
    x = (torch.rand(3, 2, 6, 16) < 0.4).float()
    _, parts = bf(x, return_components=True)
    assert torch.equal(parts["arousal"], torch.tensor([[1.0, 0.0, 0.0]] * 2))
    expected_gain = 1 + 0.5 * torch.tanh(bf.state_gain[0])
    torch.testing.assert_close(seen["gain"], expected_gain.expand(3, 2, 1, 16))
    torch.testing.assert_close(seen["threshold_shift"], bf.state_threshold[0].expand(3, 2, 1, 16))
    with torch.no_grad():
        bf.arousal_state.bias.fill_(-5.0)  # no state fires: the populations run unmodulated
    _, parts = bf(x, return_components=True)
    assert torch.equal(parts["gain"], torch.ones(3, 2, 16)) and torch.equal(parts["shift"], torch.zeros(3, 2, 16))


# --- predictive processing ----------------------------------------------------------------------------

from spiking_attn.mechanisms.predictive import (DensePredictiveCoding, SpikingPredictiveCoding,  # noqa: E402
                                                free_energy_loss)


def test_error_neurons_are_silent_on_an_exact_prediction():
    pc = SpikingPredictiveCoding(16, levels=2)
    r = (torch.rand(4, 3, 16) < 0.5).float()
    pos, neg = pc.errors(0, r, r.clone())
    assert pos.sum() == 0 and neg.sum() == 0
    pos, neg = pc.errors(0, r, torch.zeros_like(r) - 3.0)  # predicted far too little: positive errors only
    assert pos.sum() > 0 and neg.sum() == 0
    pos, neg = pc.errors(0, r, r + 3.0)  # far too much: negative errors only
    assert pos.sum() == 0 and neg.sum() > 0


@pytest.mark.parametrize("kind", ["spiking", "dense"])
def test_predictive_components_and_free_energy(kind):
    torch.manual_seed(0)
    if kind == "spiking":
        pc, x = SpikingPredictiveCoding(16, levels=3), (torch.rand(4, 2, 6, 16) < 0.4).float()
    else:
        pc, x = DensePredictiveCoding(16, levels=3), torch.randn(2, 6, 16)
    out, parts = pc(x, return_components=True)
    assert out.shape == x.shape and len(parts["errors"]) == 3 and len(parts["precisions"]) == 3
    assert float(parts["prediction_error"]) >= 0
    energy = free_energy_loss(parts)
    energy.backward()
    assert pc.precision.grad is not None and float(pc.precision.grad.abs().sum()) > 0
    if kind == "spiking":
        assert len(parts["error_spikes"]) == 3 and parts["error_spikes"][0][0].shape == (4, 2, 16)
    # exact predictions and full precision leave only the reconstruction term
    zero = {**parts, "errors": [torch.zeros(2, 16)] * 3, "precisions": [torch.ones(16)] * 3}
    torch.testing.assert_close(free_energy_loss(zero), torch.nn.functional.mse_loss(parts["reconstruction"],
                                                                                    parts["representation"]))


# --- the integrated block -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["spiking", "dense"])
def test_integrated_block_exposes_every_component(kind):
    model = build_model(ModelConfig(**SMALL, mechanism="integrated", model=kind))
    block = model.blocks[0]
    x = torch.randn(3, 2, 5, 16) if kind == "spiking" else torch.randn(2, 5, 16)
    cue = torch.ones(3, 2, 4) if kind == "spiking" else torch.ones(2, 4)
    out, parts = block(x, cue=cue, return_components=True)
    assert out.shape == x.shape
    assert set(parts["components"]) == {"thalamic", "pulvinar", "basal_forebrain", "predictive"}
    assert all(c.shape == x.shape for c in parts["components"].values())
    torch.testing.assert_close(sum(parts["weights"].values()), torch.tensor(1.0))
    assert float(parts["prediction_error"]) >= 0 and parts["arousal"].shape == (2, 3)


@pytest.mark.parametrize("name, options", [
    ("basal_forebrain", {"shift": "current"}),
    ("predictive", {"order": "fire_first"}),
    ("integrated", {"shift": "current", "order": "fire_first"}),
])
def test_the_conversion_forms_train_and_stay_spike_driven(name, options):
    """The forms a converted model takes (MechanismSpec.conversion_options) are trainable spiking models too."""
    spiking = build_model(ModelConfig(**SMALL, mechanism=name, mechanism_options=options))
    assert MECHANISMS.get(name).conversion_options.items() <= spiking.config.mechanism_options.items()
    x, cue = _inputs(8)
    assert spike_driven_report(spiking, x, cue=cue).non_binary == ["embed.linear"]
    spiking(x, cue=cue).pow(2).sum().backward()
    readouts = MECHANISMS.get(name).readouts
    params = [(n, p) for n, p in spiking.named_parameters() if not any(r in n for r in readouts)]
    assert [n for n, p in params if p.grad is None] == []
    default = build_model(ModelConfig(**SMALL, mechanism=name))
    default.load_state_dict(spiking.state_dict())  # the same parameters: only the computation differs
    for key, value in options.items():
        found = [m for m in spiking.modules() if hasattr(m, key) and isinstance(getattr(m, key), str)]
        assert found and all(getattr(m, key) == value for m in found)
    if "order" in options:  # the representation fires per token, then is averaged: a share, not a spike
        with SpikeRecorder(spiking) as rec:
            spiking.eval()(x, cue=cue)
        per_token = [s for n, s in rec.spikes.items() if n.endswith("current_lif")][0]
        assert per_token.dim() == 4  # [T, B, N, D]
    with pytest.raises(SpikingAttnError, match=f"unknown {list(options)[0]} 'sideways'"):
        ModelConfig(**SMALL, mechanism=name, mechanism_options={**options, list(options)[0]: "sideways"})


# --- cortico-thalamic attention -------------------------------------------------------------------


def _relay_input(module, run):
    """The area activity that the relay reads during ``run()``."""
    seen = []
    handle = module.relay.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        run()
    finally:
        handle.remove()
    return seen[0]


def test_dense_cortico_thalamic_is_multihead_linear_attention():
    """With identity activations, its areas are mhla_forward of its (folded) projections, read out by
    the identity: superficial masks times deep values."""
    from torch import nn

    from spiking_attn.linear_attention import mhla_forward
    from spiking_attn.mechanisms.cortico_thalamic import DenseCorticoThalamic

    torch.manual_seed(0)
    module = DenseCorticoThalamic(12, areas=3, causal=True).double().eval()
    for name in ("superficial_q_act", "superficial_k_act", "deep_act", "mask_act", "area_act"):
        setattr(module, name, nn.Identity())
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    areas = _relay_input(module, lambda: module(x))
    w = [getattr(module, n).fold().double().weight.T.reshape(12, 3, 4).transpose(0, 1) for n in ("superficial_q", "superficial_k", "deep")]
    readout = torch.eye(12, dtype=torch.float64).reshape(3, 4, 12)
    torch.testing.assert_close(areas, mhla_forward(x, *w, readout, scale=module.scale, causal=True))


@pytest.mark.parametrize("kind", ["spiking", "dense"])
def test_cortico_thalamic_masks_one_per_area_and_token_pair(kind):
    spiking, dense = _models("cortico_thalamic")  # heads 2: two areas
    module = (spiking if kind == "spiking" else dense).blocks[0].attn
    x = torch.rand(3, 2, 5, 16).round() if kind == "spiking" else torch.rand(2, 5, 16)
    out, masks = module(x, return_masks=True)
    assert out.shape == x.shape and masks.shape == (2, 2, 5, 5)
    if kind == "spiking":  # firing rates of the mask neurons
        assert bool(((masks >= 0) & (masks <= 1)).all())


def test_spiking_cortico_thalamic_a_deep_spike_passes_only_with_its_mask_neuron():
    """Token m's deep spikes reach token n's area only where mask neuron (h, n, m) fires: cutting the masks
    of every pair (n, m) with m > 0 leaves the areas reading token 0's deep spikes alone."""
    from spiking_attn.linear_attention import masked_values

    spiking, _ = _models("cortico_thalamic")
    module = spiking.blocks[0].attn  # training mode: batch statistics, so that every population fires
    x = (torch.rand(4, 2, 5, 16, generator=torch.Generator().manual_seed(3)) < 0.5).float()
    masks_seen, deep_seen = [], []
    h1 = module.mask_lif.register_forward_hook(lambda _m, _a, out: masks_seen.append(out))
    h2 = module.deep_lif.register_forward_hook(lambda _m, _a, out: deep_seen.append(out))
    try:
        area_in = []
        h3 = module.area_lif.register_forward_pre_hook(lambda _m, args: area_in.append(args[0]))
        with torch.no_grad():
            module(x)
        h3.remove()
    finally:
        h1.remove(), h2.remove()
    masks, deep = masks_seen[0], deep_seen[0]
    assert float(masks.mean()) > 0 and float(deep.mean()) > 0  # the test sees activity
    torch.testing.assert_close(area_in[0], masked_values(masks, deep))  # ANDs of mask and deep spikes, summed
    only_first = masks.clone()
    only_first[..., 1:] = 0
    changed = deep.clone()
    changed[..., 1:, :] = 1 - changed[..., 1:, :]  # every other token's deep spikes flipped
    torch.testing.assert_close(masked_values(only_first, changed), masked_values(only_first, deep))


@pytest.mark.parametrize("kind", ["spiking", "dense"])
def test_causal_cortico_thalamic_never_lets_the_future_in(kind):
    """Perturb tokens after position 2: outputs at positions 0-2 stay the same, even with biased mask
    neurons that fire without input."""
    spiking, dense = _models("cortico_thalamic", causal=True, learn_bias=True, vth=0.2)  # active when untrained
    module = (spiking if kind == "spiking" else dense).blocks[0].attn.eval()
    if kind == "spiking":
        with torch.no_grad():
            module.mask_lif.bias.fill_(0.6)  # fires on its own: the cut must come after the population
        x = (torch.rand(4, 2, 5, 16) < 0.5).float()
    else:
        x = torch.rand(2, 5, 16)
    later = x.clone()
    later[..., 3:, :] = torch.rand_like(later[..., 3:, :]).round() if kind == "spiking" else torch.rand_like(later[..., 3:, :])
    with torch.no_grad():
        a, b = module(x), module(later)
    assert torch.equal(a[..., :3, :], b[..., :3, :])
    assert not torch.equal(a, b)


# --- saliency and inhibition of return ----------------------------------------------------------------


def test_dog_kernel_has_an_excitatory_centre_and_an_inhibitory_surround():
    from spiking_attn.mechanisms.saliency import dog_kernel

    k = dog_kernel()
    assert k.shape == (7, 7) and float(k[3, 3]) > 0 and float(k[3, 5]) < 0 and float(k[0, 0]) < 0
    assert float(k.sum()) == pytest.approx(0.5, abs=1e-6)  # centre 1 minus half a surround of 1
    torch.testing.assert_close(k, k.T)


def test_the_map_size_comes_from_the_input():
    from spiking_attn.mechanisms.saliency import DenseSaliency, SpikingSaliency, grid_shape

    assert [grid_shape(n) for n in (36, 16, 12, 7, 1)] == [(6, 6), (4, 4), (3, 4), (1, 7), (1, 1)]
    dense, spiking = DenseSaliency(8, num_cues=3, glimpses=2), SpikingSaliency(8, num_cues=3)
    for n in (36, 16, 7):
        out, maps = dense(torch.rand(2, n, 8), cue=torch.eye(3)[:2], return_maps=True)
        assert out.shape == (2, n, 8) and maps.shape == (2, 2, n)
        torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2))
        out, spikes = spiking(torch.rand(3, 2, n, 8).round(), cue=torch.ones(3, 2, 3), return_maps=True)
        assert out.shape == (3, 2, n, 8) and spikes.shape == (3, 2, n)


def test_dense_ior_moves_attention_to_a_new_location_on_the_next_glimpse():
    from spiking_attn.mechanisms.saliency import glimpse_maps

    m = torch.tensor([[3.0, 2.5, 0.0, 0.0], [0.0, 0.0, 2.0, 1.0]])
    with_ior = glimpse_maps(m, 3, ior_strength=4.0, ior_decay=0.1).argmax(-1)  # [B, G]
    without = glimpse_maps(m, 3, ior_strength=0.0, ior_decay=0.1).argmax(-1)
    assert with_ior[:, 0].tolist() == [0, 2] and with_ior[:, 1].tolist() == [1, 3]  # the next glimpse moves on
    assert without.tolist() == [[0, 0, 0], [2, 2, 2]]  # without IOR it stays


def test_spiking_ior_moves_attention_to_a_new_location_on_the_next_glimpse(monkeypatch):
    """The winner's threshold rises after its spike, so on the next step a runner-up fires and it does not;
    without IOR it fires again."""
    from spiking_attn.mechanisms.saliency import WINNER_CURRENT, SpikingSaliency

    drive = torch.tensor([WINNER_CURRENT, 0.9, -2.0, -2.0]).expand(4, 1, 4)  # [T, B, N]: location 0 leads
    attended = {}
    for strength in (2.0, 0.0):
        module = SpikingSaliency(8, ior_strength=strength, ior_decay=0.1)
        monkeypatch.setattr(module, "drive", lambda x, cue: drive)
        _, attended[strength] = module(torch.ones(4, 1, 4, 8), return_maps=True)
    first, second = attended[2.0][0, 0], attended[2.0][1, 0]
    assert first.tolist() == [1, 0, 0, 0]  # the first glimpse goes to the peak
    assert second[0] == 0 and second[1] == 1  # the next one leaves it for a new location
    assert attended[0.0][1, 0, 0] == 1  # without IOR the peak wins again


def test_search_task_label_is_the_cell_of_the_sought_digit():
    from spiking_attn.data import load_digits_tokens, make_search_task

    data = make_search_task(num_train=40, num_test=10, seed=3)
    digits = load_digits_tokens()
    assert data.x_train.shape == (40, 36, 16) and data.num_classes == 9 and data.num_cues == 10
    canvas = data.x_train.reshape(40, 6, 6, 4, 4).permute(0, 1, 3, 2, 4).reshape(40, 24, 24)
    cells = canvas.reshape(40, 3, 8, 3, 8).permute(0, 1, 3, 2, 4).reshape(40, 9, 8, 8)
    for i in range(40):
        filled = [c for c in range(9) if bool(cells[i, c].any())]
        assert len(filled) == 4 and int(data.y_train[i]) in filled
        sought = cells[i, int(data.y_train[i])]
        same_class = digits.x_train[digits.y_train == data.cue_train[i]]
        assert any(torch.equal(sought, image) for image in same_class)
    again = make_search_task(num_train=40, num_test=10, seed=3)
    assert torch.equal(again.x_train, data.x_train) and torch.equal(again.y_test, data.y_test)


# --- synthetic thalamus -------------------------------------------------------------------------------


def test_top_k_selects_exactly_k_with_ties_broken_by_index_and_has_a_gradient():
    from spiking_attn.mechanisms.synthetic_thalamus import top_k_select

    salience = torch.tensor([[0.5, 2.0, 2.0, 2.0, -1.0], [0.0, 0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    selected = top_k_select(salience, 2)
    assert selected.tolist() == [[0, 1, 1, 0, 0], [1, 1, 0, 0, 0]]  # equals: the lower index first
    assert top_k_select(salience, 9).detach().sum(-1).tolist() == [5, 5]  # K above N: all of them
    (selected * torch.arange(5.0)).sum().backward()
    assert float(salience.grad.abs().sum()) > 0


@pytest.mark.parametrize("k", [1, 2, 3])
def test_spiking_k_winner_take_all_passes_exactly_k_tokens_every_step(k):
    from spiking_attn.mechanisms.synthetic_thalamus import SpikingSyntheticThalamus

    torch.manual_seed(k)
    module = SpikingSyntheticThalamus(16, heads=2, num_cues=4, k=k, phases=3, lif={"vth": 0.2}).eval()  # active
    x = (torch.rand(6, 5, 7, 16) < 0.4).float()
    cue = _cue_spikes(torch.tensor([0, 1, 2, 3, 0]), 4, 6)
    with torch.no_grad():
        out, parts = module(x, cue=cue, return_parts=True)
    assert out.shape == x.shape
    assert parts["selected"].sum(-1).eq(k).all()  # [T, B]: exactly K per step and sample
    # only the selected tokens' keys and values enter the workspace
    seen = []
    handle = module.ws_kv_lif.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        module(x, cue=cue)
    handle.remove()
    sel = parts["selected"].unsqueeze(-1)  # [T, B, N, 1]
    k, v = (module.ws_k_lif(module.ws_k(x)), module.ws_v_lif(module.ws_v(x)))
    kv = k * v * sel
    expected = kv.sum(2, keepdim=True) + module.coincidence_scale * parts["phase"].unsqueeze(-1) * \
        (kv * parts["phase"].unsqueeze(-1)).sum(2, keepdim=True)
    torch.testing.assert_close(seen[0], expected.detach())
    assert not torch.equal((k * v).sum(2), kv.sum(2))  # the unselected ones would have added something


def _cue_spikes(index, classes, steps):
    return torch.nn.functional.one_hot(index, classes).float().expand(steps, -1, -1)


def test_phase_tags_are_spike_timing_within_the_cycle():
    from spiking_attn.mechanisms.synthetic_thalamus import SpikingSyntheticThalamus

    module = SpikingSyntheticThalamus(8, heads=2, k=2, phases=3)
    with torch.no_grad():
        module.phase.weight.zero_()
        module.phase.bias.copy_(torch.tensor([0.0, 1.0, 0.0]))  # every token's slot is 1
        module.phase.weight[2, 0] = 5.0  # ...unless channel 0 fires: slot 2
    x = torch.zeros(7, 1, 3, 8)
    x[:, 0, 0, 0] = 1.0  # token 0 drives slot 2
    spikes = module.phase_spikes(x)[:, 0]  # [T, N]
    assert spikes[:, 0].tolist() == [0, 0, 1, 0, 0, 1, 0]  # steps 2 and 5: t mod 3 == 2
    assert spikes[:, 1].tolist() == [0, 1, 0, 0, 1, 0, 0] and torch.equal(spikes[:, 1], spikes[:, 2])  # in phase


@pytest.mark.parametrize("kind", ["spiking", "dense"])
def test_reward_feedback_moves_the_salience_weights_at_inference(kind):
    from spiking_attn.mechanisms.synthetic_thalamus import DenseSyntheticThalamus, SpikingSyntheticThalamus

    torch.manual_seed(0)
    if kind == "spiking":
        module = SpikingSyntheticThalamus(16, heads=2, num_cues=4, k=2)  # batch statistics: active populations
        x, cue = (torch.rand(4, 3, 6, 16) < 0.5).float(), _cue_spikes(torch.tensor([0, 1, 2]), 4, 4)
    else:
        module = DenseSyntheticThalamus(16, heads=2, num_cues=4, k=2).eval()
        x, cue = torch.rand(3, 6, 16), torch.eye(4)[:3]
    with torch.no_grad():
        module(x, cue=cue)
    assert module.eligibility is None  # off by default: nothing kept
    with pytest.raises(SpikingAttnError, match="plasticity on"):
        module.reinforce(1.0)
    module.plasticity = True
    before = module.salience_weight.detach().clone()
    with torch.no_grad():
        first = module(x, cue=cue, return_parts=True)[1]["salience"]
    eligibility = module.eligibility.clone()
    assert eligibility.shape == (3, 2) and float(eligibility.sum()) > 0
    change = module.reinforce(torch.tensor([1.0, 1.0, 1.0]), lr=0.5)
    torch.testing.assert_close(module.salience_weight.detach(), before + 0.5 * eligibility.mean(0))
    assert bool((change >= 0).all()) and module.eligibility is None
    with torch.no_grad():
        second = module(x, cue=cue, return_parts=True)[1]["salience"]
    assert not torch.equal(first, second)  # the rewarded heads now weigh more
    module.reinforce(-1.0, lr=0.5)  # a punishment lowers them again
    assert bool((module.salience_weight.detach() < before + 0.5 * eligibility.mean(0) + 1e-6).all())
    with pytest.raises(ShapeError, match=r"reward must be a number or \[B\] = \[3\]"):
        module(x, cue=cue)
        module.reinforce(torch.ones(2))


def test_exposed_signal_reads_a_mechanism_inside_a_model_without_changing_it():
    from spiking_attn.recorder import exposed_signal

    spiking, _ = _models("cortico_thalamic")
    model = spiking.eval()
    x, cue = _inputs()
    with torch.no_grad():
        logits = model(x, cue=cue)
    seen = []
    handle = model.blocks[0].attn.register_forward_hook(lambda m, a, k, out: seen.append(
        m.forward(*a, **{**k, "return_masks": True})[1]), with_kwargs=True)
    with torch.no_grad():
        model(x, cue=cue)
    handle.remove()
    masks = exposed_signal(model, model.blocks[0].attn, "return_masks", x, cue=cue)
    assert torch.equal(masks, seen[0])
    with torch.no_grad():
        assert torch.equal(model(x, cue=cue), logits)  # hooks gone, output as before
    with pytest.raises(SpikingAttnError, match="must be a submodule"):
        exposed_signal(model, torch.nn.Linear(2, 2), "return_masks", x)


@pytest.mark.parametrize("name, options, message", [
    ("saliency", {"ior_decay": 1.5}, r"ior_decay must lie in \[0, 1\]"),
    ("saliency", {"ior_strength": -1.0}, "ior_strength must be >= 0"),
    ("saliency", {"ior_strength": float("nan")}, "ior_strength must be a finite number"),
    ("saliency", {"hidden": 0}, "hidden"),
    ("synthetic_thalamus", {"k": 0}, "k"),
    ("synthetic_thalamus", {"phases": True}, "phases"),
])
def test_new_mechanism_options_are_checked_by_name(name, options, message):
    with pytest.raises(SpikingAttnError, match=message):
        ModelConfig(**SMALL, mechanism=name, mechanism_options=options)


def test_search_task_rejects_bad_sizes():
    from spiking_attn.data import make_search_task

    with pytest.raises(SpikingAttnError, match="digits_per_canvas must be at most 9"):
        make_search_task(num_train=4, num_test=2, digits_per_canvas=10)
    with pytest.raises(SpikingAttnError, match="num_train"):
        make_search_task(num_train=0)
