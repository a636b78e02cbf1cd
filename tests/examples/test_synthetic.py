"""The embedded dataset: deterministic, cached, hard negatives, honest best R@1."""

import os
import re

import numpy as np
from vse import synthetic as S

CFG = S.SyntheticConfig(seed=3, n_train=12, n_dev=8, n_test=40)


def test_deterministic_and_seeded():
    a, b = S.generate(CFG), S.generate(CFG)
    for split in ("train", "dev", "test"):
        np.testing.assert_array_equal(a[split]["images"], b[split]["images"])
        assert a[split]["captions"] == b[split]["captions"]
    c = S.generate(S.SyntheticConfig(seed=4, n_train=12, n_dev=8, n_test=40))
    assert c["test"]["captions"] != a["test"]["captions"]


def test_cache_round_trip(tmp_path):
    first = S.load(CFG, str(tmp_path))
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].endswith(".npz")
    again = S.load(CFG, str(tmp_path))
    np.testing.assert_array_equal(first["test"]["images"], again["test"]["images"])
    assert first["test"]["descriptions"] == again["test"]["descriptions"]
    with open(tmp_path / files[0], "wb") as f:  # a corrupt cache file is regenerated
        f.write(b"junk")
    msgs = []
    third = S.load(CFG, str(tmp_path), log=msgs.append)
    assert msgs and third["test"]["captions"] == first["test"]["captions"]


def test_shapes_and_five_different_captions_naming_every_attribute():
    d = S.generate(CFG)["test"]
    assert d["images"].shape == (40, 32, 32, 3) and d["images"].dtype == np.uint8
    assert len(d["captions"]) == 200
    for i, desc in enumerate(d["descriptions"]):
        caps = d["captions"][5 * i : 5 * i + 5]
        assert len(set(caps)) == 5
        assert 2 <= len(desc) <= 3
        for cap in caps:
            words = set(re.findall(r"[a-z]+", cap))
            for shape, colour, size, _ in desc:
                assert S.COLOUR_NAMES[colour] in words
                assert words & set(S.SHAPE_WORDS[S.SHAPES[shape]])
                assert words & set(S.SIZE_WORDS[S.SIZES[size]])


def test_objects_are_drawn_in_their_colour_and_cell():
    scene = ((0, 0, 1, 0), (1, 2, 1, 8))  # a large red circle top left, a large blue square bottom right
    img = S.render(scene, np.random.default_rng(0), 32).astype(int)
    red = (img[..., 0] > 150) & (img[..., 1] < 100)
    blue = (img[..., 2] > 150) & (img[..., 0] < 100)
    ys, xs = np.nonzero(red)
    assert red.sum() > 10 and ys.max() < 11 and xs.max() < 11
    ys, xs = np.nonzero(blue)
    assert blue.sum() > 10 and ys.min() > 20 and xs.min() > 20


def test_hard_negatives_and_best_recall():
    d = S.generate(S.SyntheticConfig(seed=0, n_train=0, n_dev=0, n_test=200))["test"]["descriptions"]
    assert S.hard_negative_rate(d) > 90  # families: a base scene and one-attribute variants
    for v in S.one_attribute_variants(d[0]):
        diff = sum(a != b for a, b in zip(sorted(v), sorted(d[0])))
        assert 1 <= diff <= 2  # one object changed (its sorted position may move)
    # two images sharing a description: each is found first half of the time at best
    descs = [d[0], d[0], d[1], d[2]]
    assert S.best_recall_at_1(descs) == 75.0
    assert S.best_recall_at_1(d) > 95
