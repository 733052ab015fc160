"""Three-stage training: exactly the intended parameters learn, frozen statistics stay."""

from __future__ import annotations

import copy

import pytest
import torch

from glnet.config import StageConfig, TrainConfig
from glnet.nn.glnet import TRAINED, GLNet
from glnet.train.losses import focal_loss
from glnet.train.stages import accumulate_gradients, make_optimizer, train_step


def _window(cfg, h=192, w=160, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand((1, cfg.in_channels, h, w), generator=g)
    labels = torch.randint(0, cfg.num_classes, (1, h, w), generator=g)
    labels[:, :5] = 255  # some unlabelled pixels
    return image, labels


def _grad_owners(model: GLNet) -> set[str]:
    return {name for name, p in model.named_parameters()
            if p.grad is not None and p.grad.abs().sum() > 0}


def _bn_stats(module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running_" in k}


# Decoder layers each stage must train; everything else of a trained module
# must be unused (the other path of the global decoder) or receive gradients.
EXPECTED_PREFIXES = {
    1: ("global_backbone.", "global_decoder.top.", "global_decoder.lateral.",
        "global_decoder.smooth_a.", "global_decoder.smooth_b.", "global_decoder.classify."),
    2: ("local_backbone.", "local_decoder.", "aggregation."),
    3: ("global_backbone.", "global_decoder.top_ctx.", "global_decoder.lateral_ctx.",
        "global_decoder.smooth_a_ctx.", "global_decoder.smooth_b_ctx.", "global_decoder.fuse.",
        "global_decoder.classify.", "aggregation."),
}


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_each_stage_trains_exactly_its_parameters(tiny_cfg, stage):
    model = GLNet(tiny_cfg)
    for s in range(1, stage + 1):
        model.set_stage(s)
    accumulate_gradients(model, [_window(tiny_cfg)], TrainConfig(sub_batch=2))
    owners = _grad_owners(model)
    expected = {n for n, _ in model.named_parameters() if n.startswith(EXPECTED_PREFIXES[stage])}
    assert owners == expected
    # requires_grad follows the stage's modules
    for name, p in model.named_parameters():
        assert p.requires_grad == name.startswith(TRAINED[stage])


@pytest.mark.parametrize("stage", [2, 3])
def test_a_subset_of_patches_still_trains_the_same_parameters(tiny_cfg, stage):
    model = GLNet(tiny_cfg)
    for s in range(1, stage + 1):
        model.set_stage(s)
    accumulate_gradients(model, [_window(tiny_cfg)], TrainConfig(sub_batch=2, patches_per_window=1))
    expected = {n for n, _ in model.named_parameters() if n.startswith(EXPECTED_PREFIXES[stage])}
    assert _grad_owners(model) == expected


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_frozen_parts_do_not_move(tiny_cfg, stage):
    model = GLNet(tiny_cfg)
    for s in range(1, stage + 1):
        model.set_stage(s)
    before = copy.deepcopy(model.state_dict())
    cfg = TrainConfig(sub_batch=3, stages={stage: StageConfig(epochs=1, lr=1e-2)})
    opt = make_optimizer(model, stage, cfg)
    for seed in range(2):
        train_step(model, [_window(tiny_cfg, seed=seed)], opt, cfg)
    after = model.state_dict()
    trained = TRAINED[stage]
    moved = {k for k in after if not torch.equal(before[k], after[k])}
    frozen_moved = {k for k in moved if not k.startswith(trained)}
    assert frozen_moved == set()
    # The trained parts did learn, BatchNorm statistics included.
    bn_key = f"{trained[0]}.bn1.running_mean"
    assert bn_key in moved
    assert any(k.startswith(trained[0]) and k.endswith("weight") for k in moved)


def test_frozen_batchnorm_stays_in_eval_after_train(tiny_cfg):
    model = GLNet(tiny_cfg)
    model.set_stage(2)
    model.train()
    assert not model.global_backbone.training and not model.global_decoder.training
    assert model.local_backbone.training and model.aggregation.training
    model.set_stage(3)
    model.train()
    assert not model.local_backbone.training and not model.context_backbone.training
    assert model.global_backbone.training


def test_stage3_context_is_the_stage1_global_branch(tiny_cfg):
    model = GLNet(tiny_cfg)
    model.set_stage(1)
    opt = make_optimizer(model, 1, TrainConfig())
    train_step(model, [_window(tiny_cfg)], opt, TrainConfig())
    stage1 = copy.deepcopy(model.global_backbone.state_dict())
    model.set_stage(2)
    model.set_stage(3)
    cfg = TrainConfig(stages={3: StageConfig(epochs=1, lr=1e-2)})
    opt = make_optimizer(model, 3, cfg)
    train_step(model, [_window(tiny_cfg)], opt, cfg)
    ctx = model.context_backbone.state_dict()
    assert all(torch.equal(ctx[k], v) for k, v in stage1.items())
    assert not all(torch.equal(model.global_backbone.state_dict()[k], v) for k, v in stage1.items())


def test_stage3_gradients_equal_a_single_graph(tiny_cfg):
    """Freeing each sub-batch's graph gives the gradients of one big graph."""
    from glnet.nn.predict import downsample
    from glnet.nn.sharing import LocalToGlobal, crop_pyramid, crop_resized
    from glnet.train.losses import match_labels
    from glnet.train.stages import _grid

    model = GLNet(tiny_cfg)
    model.set_stage(3)
    image, labels = _window(tiny_cfg)
    cfg = TrainConfig(sub_batch=2)
    accumulate_gradients(model, [(image, labels)], cfg)
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    # Reference: everything in one graph, one backward.
    grid = _grid(model, image)
    img_g = model.prepare(downsample(image, model.global_shape(*image.shape[-2:])))
    with torch.no_grad():
        context = model.context_pyramid(img_g)
        merger = LocalToGlobal(context, grid)
        patches = model.prepare(grid.extract(image, range(len(grid))))
        local = model.local_pyramid(patches, crop_pyramid(context, grid.fractions, grid.ratio))
        merger.add(local, range(len(grid)))
    refined = model.refined_pyramid(img_g, merger.result())

    def loss(logits, lab):
        lg, lb = match_labels(logits, lab, True)
        return focal_loss(lg, lb, cfg.focal_gamma, None, cfg.ignore_index)

    fg = crop_resized(refined.ps3, grid.fractions, grid.ratio, tuple(local.ps3.shape[-2:]))
    lab = grid.extract(labels, range(len(grid)))[:, 0]
    # Per-patch mean of sub-batch means equals the mean over sub-batches weighted by size.
    total = loss(refined.logits, labels)
    for index in [range(s, min(s + 2, len(grid))) for s in range(0, len(grid), 2)]:
        idx = list(index)
        total = total + loss(model.aggregate(local.ps3[idx], fg[idx]), lab[idx]) * len(idx) / len(grid)
    total.backward()
    ref = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(ref) == set(ours)
    for name in ref:
        torch.testing.assert_close(ours[name], ref[name], rtol=1e-4, atol=1e-6, msg=name)


def test_decoders_learn_at_their_own_rate(tiny_cfg):
    """Stage 2's trunk gets the stage's rate; its decoder and the aggregation conv the factor's."""
    model = GLNet(tiny_cfg)
    model.set_stage(2)
    cfg = TrainConfig(stages={2: StageConfig(epochs=1, lr=1e-3)}, decoder_lr_factor=10.0)
    opt = make_optimizer(model, 2, cfg)
    rates = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert {rates[id(p)] for p in model.local_backbone.parameters()} == {1e-3}
    assert {rates[id(p)] for p in model.local_decoder.parameters()} == {1e-2}
    assert {rates[id(p)] for p in model.aggregation.parameters()} == {1e-2}
    assert not any(id(p) in rates for p in model.global_backbone.parameters())
    assert [g["initial_lr"] for g in opt.param_groups] == [1e-3, 1e-2]
