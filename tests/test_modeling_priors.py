"""Priors against a hand-written loop of the official make_priors formula."""
import itertools
import math

import pytest
import torch

from yolact_d2.modeling.priors import YolactPriorGenerator

SIZES_550 = [(69, 69), (35, 35), (18, 18), (9, 9), (5, 5)]
V1_SCALES = [[24], [48], [96], [192], [384]]
PLUS_SCALES = [[s * 2 ** (j / 3.0) for j in range(3)] for s in [24, 48, 96, 192, 384]]
RATIOS = [[1, 1 / 2, 2]] * 5


def official_loop(sizes, scales, ratios, max_size, use_pixel_scales=True, preapply_sqrt=False, square=True):
    """The official PredictionModule.make_priors, level by level, as plain Python floats."""
    data = []
    for (conv_h, conv_w), level_scales, ars in zip(sizes, scales, ratios):
        for j, i in itertools.product(range(conv_h), range(conv_w)):
            x = (i + 0.5) / conv_w
            y = (j + 0.5) / conv_h
            for scale in level_scales:
                for ar in ars:
                    if not preapply_sqrt:
                        ar = math.sqrt(ar)
                    if use_pixel_scales:
                        w = scale * ar / max_size
                        h = scale / ar / max_size
                    else:
                        w = scale * ar / conv_w
                        h = scale / ar / conv_h
                    if square:
                        h = w
                    data += [x, y, w, h]
    return torch.tensor(data, dtype=torch.float32).view(-1, 4)


def test_v1_priors_equal_official_loop_and_count():
    gen = YolactPriorGenerator(V1_SCALES, RATIOS, square_anchors=True)
    priors = gen(SIZES_550, (550, 550))
    assert priors.shape == (19248, 4)
    assert gen.num_anchors_per_location == [3] * 5
    assert torch.equal(priors, official_loop(SIZES_550, V1_SCALES, RATIOS, 550))
    # v1 "square anchor" bug: relative h == w for every prior
    assert torch.equal(priors[:, 2], priors[:, 3])


def test_plus_priors_three_scales_not_square():
    gen = YolactPriorGenerator(PLUS_SCALES, RATIOS, square_anchors=False)
    priors = gen(SIZES_550, (550, 550))
    assert priors.shape == (57744, 4)
    assert torch.equal(priors, official_loop(SIZES_550, PLUS_SCALES, RATIOS, 550, square=False))
    # first location of P3: scale 24 ratio 2 -> w = 24 * sqrt(2) / 550, h = 24 / sqrt(2) / 550
    assert priors[2].tolist() == pytest.approx([0.5 / 69, 0.5 / 69, 24 * 2**0.5 / 550, 24 / 2**0.5 / 550], rel=1e-6)


@pytest.mark.parametrize("use_pixel_scales,preapply_sqrt", [(False, True), (False, False), (True, True)])
def test_other_official_switches(use_pixel_scales, preapply_sqrt):
    sizes = [(7, 5), (4, 3)]
    scales, ratios = [[1.0], [1.5, 2.0]], [[1.0, 0.66], [1.7]]
    gen = YolactPriorGenerator(scales, ratios, use_pixel_scales, preapply_sqrt, square_anchors=False)
    want = official_loop(sizes, scales, ratios, 300, use_pixel_scales, preapply_sqrt, square=False)
    assert torch.equal(gen(sizes, (300, 300)), want)


def test_im400_scales_and_cache():
    scales = [[int(s[0] / 550 * 400)] for s in V1_SCALES]
    assert scales == [[17], [34], [69], [139], [279]]
    sizes = [(50, 50), (25, 25), (13, 13), (7, 7), (4, 4)]
    gen = YolactPriorGenerator(scales, RATIOS)
    first = gen(sizes, (400, 400))
    assert torch.equal(first, official_loop(sizes, scales, RATIOS, 400))
    assert gen(sizes, (400, 400)) is first  # cached per input size
    assert gen(SIZES_550, (550, 550)) is not first


def test_level_count_mismatch_is_named():
    gen = YolactPriorGenerator(V1_SCALES, RATIOS)
    with pytest.raises(ValueError, match="5 levels"):
        gen(SIZES_550[:3], (550, 550))
    with pytest.raises(ValueError, match="levels of aspect ratios"):
        YolactPriorGenerator(V1_SCALES, RATIOS[:2])
