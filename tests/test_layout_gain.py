"""The layout gain (evaluation/layout_gain.py) and the variant table built from it (evaluation/table_stats.py)."""
from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from evaluation.layout_gain import LayoutLosses, layout_losses
from evaluation.table_stats import (category_group_map, compare, mean_std, resampled, sample_groups, summarise_row,
                                    variant_table)
from hoi.records import Interaction
from helpers import open_gates, with_tokens


def samples(n, seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        x0, y0 = torch.rand(2, generator=g).tolist()
        box_s = (0.5 * x0, 0.5 * y0, 0.5 * x0 + 0.4, 0.5 * y0 + 0.4)
        box_o = (0.1, 0.5, 0.3, 0.9)
        subject = ("person", "robot")[i % 2]
        action = ("hold", "wave at")[(i // 2) % 2]
        out.append(SimpleNamespace(image=torch.rand(3, size, size, generator=g) * 2 - 1, caption=f"a {subject}",
                                   interactions=[Interaction(subject, action, "ball", box_s, box_o)]))
    return out


def with_open_gates(model, value=0.7):
    return open_gates(copy.deepcopy(model), value)


def test_layout_gain_is_zero_for_a_model_that_ignores_the_layout(tiny_model):
    """Fresh fusers (zero gates) add nothing: both losses are the same numbers."""
    losses = layout_losses(tiny_model, samples(3), timesteps=(50, 900))
    assert losses.layout.shape == (3, 2) and (losses.null > 0).all()
    assert torch.equal(losses.layout, losses.null) and losses.gain() == 0.0


def test_layout_gain_matches_a_direct_computation(tiny_model):
    """Sample 1 at t = 600, recomputed by hand with the same seeded noise."""
    model = with_open_gates(tiny_model)
    data = samples(3)
    losses = layout_losses(model, data, timesteps=(600,), seed=5)
    assert losses.gain() != 0.0
    from interact.controls.interactions import build_grounding
    pn = model.interaction_tokenizer
    with torch.no_grad():
        z = model.autoencoder.encode(data[1].image[None]).mean * model.scale_factor
        noise = torch.randn(z.shape[1:], generator=torch.Generator().manual_seed(5 * 1_000_003 + 1 * 1009 + 600))[None]
        t = torch.tensor([600])
        x_t = model.diffusion.q_sample(z, t, noise)
        target = model.diffusion.training_target(z, t, noise)
        context = model.text_encoder.encode([data[1].caption])
        g = build_grounding([data[1].interactions], model.text_encoder.encode_pooled, pn.in_dim, pn.max_interactions)
        for tokens, got in ((pn(**g.as_kwargs()), losses.layout), (pn(**g.null().as_kwargs()), losses.null)):
            want = (model.unet(x_t, t, context, with_tokens(tokens)) - target).pow(2).mean()
            assert math.isclose(float(got[1, 0]), float(want), rel_tol=1e-5)


def test_layout_losses_do_not_depend_on_batching(tiny_model):
    model = with_open_gates(tiny_model)
    data = samples(3, seed=1)
    a = layout_losses(model, data, timesteps=(300,), batch_size=3)
    b = layout_losses(model, data, timesteps=(300,), batch_size=1)
    torch.testing.assert_close(a.layout, b.layout, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(a.null, b.null, rtol=1e-5, atol=1e-7)


def test_layout_losses_check_their_input(tiny_model):
    with pytest.raises(ValueError, match="no samples"):
        layout_losses(tiny_model, [])
    with pytest.raises(ValueError, match=r"timesteps \[1000\]"):
        layout_losses(tiny_model, samples(1), timesteps=(1000,))


def test_gain_pools_before_dividing_and_subsets():
    losses = LayoutLosses((10, 20), layout=torch.tensor([[1.0, 2.0], [3.0, 1.0]]),
                          null=torch.tensor([[2.0, 2.0], [4.0, 2.0]]))
    assert losses.gain() == pytest.approx(1 - 7 / 10)
    assert losses.gain(torch.tensor([False, True])) == pytest.approx(1 - 4 / 6)
    assert losses.gain_per_timestep() == pytest.approx({10: 1 - 4 / 6, 20: 1 - 3 / 4})
    assert math.isnan(losses.gain(torch.tensor([False, False])))


# --------------------------------------------------------------------------- the variant table


def test_mean_std_closed_form():
    a = mean_std([1.0, 2.0, 4.0])
    assert a["mean"] == pytest.approx(7 / 3) and a["std"] == pytest.approx(math.sqrt(((-4 / 3) ** 2 + (-1 / 3) ** 2
                                                                                        + (5 / 3) ** 2) / 2))
    assert math.isnan(mean_std([0.3])["std"])


def seed_scores(full, draws):
    m = {"full": full, "rare": full / 2, "non_rare": full}
    return {"map": {"default": m, "known_object": m}, "map_groups": {"non_contact": full}, "bootstrap": draws}


def test_rows_average_their_seeds_and_comparisons_add_layout_and_seed_errors():
    a = summarise_row([seed_scores(0.6, [0.5, 0.7, 0.6, 0.8]), seed_scores(0.4, [0.3, 0.5, 0.4, 0.4])])
    b = summarise_row([seed_scores(0.2, [0.1, 0.2, 0.3, 0.2])])
    assert a["map"]["default"]["full"] == pytest.approx(0.5) and a["map_full_seeds"] == [0.6, 0.4]
    assert a["bootstrap"] == pytest.approx([0.4, 0.6, 0.5, 0.6])       # draw by draw, the mean of the seeds
    c = compare(a, b)
    paired = [0.4 - 0.1, 0.6 - 0.2, 0.5 - 0.3, 0.6 - 0.2]
    mean = sum(paired) / 4
    se_layouts = math.sqrt(sum((x - mean) ** 2 for x in paired) / 3)
    se_seeds = math.sqrt(0.02 / 2)                                     # var([0.6, 0.4]) / 2 seeds; b has one seed
    assert c["difference"] == pytest.approx(0.3) and c["se_layouts"] == pytest.approx(se_layouts)
    assert c["se_seeds"] == pytest.approx(se_seeds)
    assert c["se"] == pytest.approx(math.sqrt(se_layouts ** 2 + se_seeds ** 2)) and c["z"] == pytest.approx(0.3 / c["se"])


def test_resampled_records_are_distinct_images():
    from dataset.toy import categories_dict
    from evaluation.hico_map import HOICategories, evaluate_hoi_map
    cats = HOICategories.toy()
    assert len(categories_dict()["hoi_categories"]) == len(cats)
    hoi = {"subject_id": 0, "object_id": 1, "category_id": 1}
    gt = [{"file_name": f"{i}.png", "annotations": [{"bbox": [0, 0, 10, 20], "category_id": 1},
                                                   {"bbox": [10, 5, 14, 9], "category_id": 3}], "hoi_annotation": [hoi]}
          for i in range(2)]
    det = [{"file_name": g["file_name"], "predictions": g["annotations"],
            "hoi_prediction": [dict(hoi, score=0.9)] if i == 0 else []} for i, g in enumerate(gt)]
    assert evaluate_hoi_map(gt, det, cats).summary["default"]["full"] == pytest.approx(6 / 11)   # recall 1/2
    draw = [0, 0, 0]     # image 0 three times: every pair found
    assert evaluate_hoi_map(resampled(gt, draw), resampled(det, draw), cats).summary["default"]["full"] == 1.0
    assert [r["file_name"] for r in resampled(gt, [1, 1])] == ["0:1.png", "1:1.png"]


def test_category_groups_follow_the_role_types():
    from dataset.role_types import toy_role_types
    rows = [{"subject": "person", "verb": "hold", "ap_default": 0.9},
            {"subject": "robot", "verb": "hold", "ap_default": 0.5},
            {"subject": "robot", "verb": "wave at", "ap_default": 0.1},
            {"subject": "person", "verb": "point at", "ap_default": 0.3},
            {"subject": "robot", "verb": "kick", "ap_default": float("nan")}]  # no ground truth: left out
    got = category_group_map(rows, toy_role_types())
    assert got["non_human_subject"] == pytest.approx((0.5 + 0.1) / 2)
    assert got["non_contact"] == pytest.approx((0.1 + 0.3) / 2)


def test_sample_groups():
    from dataset.role_types import toy_role_types
    got = sample_groups(samples(4), toy_role_types())  # subjects person, robot, person, robot; hold x2, wave at x2
    assert got == {"all": [True] * 4, "non_human_subject": [False, True, False, True],
                   "non_contact": [False, False, True, True]}


def test_variant_table_rows():
    results = {"text only": {"map": {}},
               "InteractDiffusion": {"layout_gain": mean_std([0.010, 0.012, 0.014]),
                                     "map_groups": {"non_human_subject": 0.25, "non_contact": float("nan")}},
               "InteractDiffusion + typed roles": {"layout_gain": mean_std([0.020])},
               "_meta": {}}
    lines = variant_table(results).strip().splitlines()
    assert len(lines) == 4  # header, rule, two rows with a layout gain
    assert lines[2] == "| InteractDiffusion | 3 | 1.200 ± 0.200 | 25.00 | - |"
    assert lines[3] == "| InteractDiffusion + typed roles | 1 | 2.000 | - | - |"


def test_layout_gains_are_kept_beside_the_checkpoint_and_redone_when_it_changes(tmp_path, tiny_model, monkeypatch):
    from helpers import TINY_CONFIG
    import evaluation.layout_gain as lg
    from experiments.toy_table import ToyRow, layout_gains
    from interact.checkpoint import save_checkpoint
    ckpt = tmp_path / "run" / "model_final.pth"
    save_checkpoint(ckpt, with_open_gates(tiny_model))
    row = ToyRow("tiny", "tiny", str(TINY_CONFIG), True)
    data = samples(2)
    groups = {"all": [True, True], "first": [True, False]}
    calls = []
    real = lg.layout_losses
    monkeypatch.setattr(lg, "layout_losses", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = layout_gains(row, ckpt, data, groups)
    assert first["all"] != 0.0 and (tmp_path / "run" / "layout_gain_n2.json").is_file()
    assert layout_gains(row, ckpt, data, groups) == first and len(calls) == 1  # reused
    save_checkpoint(ckpt, with_open_gates(tiny_model, 0.3))  # another model in the same file
    assert layout_gains(row, ckpt, data, groups) != first and len(calls) == 2
