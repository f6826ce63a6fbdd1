"""The statistics and formatting of the paper's table (docs/reference.md §5): mAP per group of
categories and samples, bootstrap draws over the layouts, summaries over training seeds, paired
comparisons between rows, verbs of found pairs in twin scenes, and the markdown tables.

Pure functions of scores and detections; the experiments that produce them (training rows,
generating, detecting, caching) are experiments/toy_table.py and experiments/hico_table.py.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from evaluation.hico_map import HOICategories, box_iou, evaluate_hoi_map

METRIC_COLUMNS = (("default", "full"), ("default", "rare"), ("default", "non_rare"),
                  ("known_object", "full"), ("known_object", "rare"), ("known_object", "non_rare"))
CEILING_ROW = "real images (detector ceiling)"


def mean_std(values: list[float]) -> dict:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return {"mean": mean, "std": std, "n": n, "values": values}


# ----------------------------------------------------------------------------- groups

def category_group_map(per_category: list[dict], role_types) -> dict:
    """Default-setting mAP over the categories with a non-human subject, and over those with a
    non-contact verb (categories without ground truth left out, as in every mean)."""
    from dataset.role_types import NON_CONTACT, NON_HUMAN
    groups = {"non_human_subject": lambda r: role_types.entity(r["subject"]) == NON_HUMAN,
              "non_contact": lambda r: role_types.action(r["verb"]) == NON_CONTACT}
    out = {}
    for name, member in groups.items():
        aps = [r["ap_default"] for r in per_category if member(r) and not math.isnan(r["ap_default"])]
        out[name] = sum(aps) / len(aps) if aps else float("nan")
    return out


def sample_groups(samples, role_types) -> dict[str, list[bool]]:
    """Which samples have a non-human subject, and which a non-contact action."""
    from dataset.role_types import NON_CONTACT, NON_HUMAN
    return {"all": [True] * len(samples),
            "non_human_subject": [any(role_types.entity(it.subject) == NON_HUMAN for it in s.interactions)
                                  for s in samples],
            "non_contact": [any(role_types.action(it.action) == NON_CONTACT for it in s.interactions)
                            for s in samples]}


# ----------------------------------------------------------------------------- bootstrap and comparisons

def bootstrap_indices(n: int, reps: int, seed: int = 0) -> np.ndarray:
    """[reps, n] resampled layout indices; the same draws serve every row, so differences are paired."""
    return np.random.default_rng(seed).integers(0, n, size=(reps, n))


def resampled(records: list[dict], index: np.ndarray) -> list[dict]:
    """The records at `index` (with repeats), renamed so that each copy is its own image."""
    return [dict(records[i], file_name=f"{k}:{records[i]['file_name']}") for k, i in enumerate(index)]


def map_full(gt: list[dict], detections: list[dict], categories: HOICategories) -> float:
    return evaluate_hoi_map(gt, detections, categories).summary["default"]["full"]


def bootstrap_map(gt: list[dict], detections: list[dict], categories: HOICategories,
                  draws: np.ndarray) -> np.ndarray:
    """Default Full mAP of each bootstrap draw of the layouts."""
    return np.array([map_full(resampled(gt, d), resampled(detections, d), categories) for d in draws])


def summarise_row(seeds: list[dict]) -> dict:
    """A row of the table from its seeds' scores: means over seeds, the seeds' spread, the
    bootstrap interval of the seed-mean Default Full mAP."""
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    out = {"seeds": len(seeds), "map": {s: {g: mean([x["map"][s][g] for x in seeds]) for g in ("full", "rare", "non_rare")}
                                       for s in ("default", "known_object")},
           "map_groups": {g: mean([x["map_groups"][g] for x in seeds]) for g in seeds[0]["map_groups"]},
           "map_full_seeds": [x["map"]["default"]["full"] for x in seeds]}
    draws = np.mean([x["bootstrap"] for x in seeds], axis=0)
    out["bootstrap"] = draws.tolist()
    out["map_full_ci"] = [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]
    if "fid" in seeds[0]:
        out["fid"] = mean([x["fid"] for x in seeds])
        out["fid_seeds"] = [x["fid"] for x in seeds]
        out["kid_mean"] = mean([x["kid_mean"] for x in seeds])
        out["kid_std"] = math.sqrt(mean([x["kid_std"] ** 2 for x in seeds]) / len(seeds))
    if all("pair_verbs" in x for x in seeds):
        out["pair_verbs"] = {kind: {k: mean([x["pair_verbs"][kind][k] for x in seeds]) for k in ("found", "verb_right")}
                             for kind in seeds[0]["pair_verbs"]}
    for extra in ("layout_gain", "seconds_per_image"):
        if extra in seeds[0]:
            out[extra] = mean_std([x[extra] for x in seeds]) if extra == "layout_gain" else \
                mean([x[extra] for x in seeds])
    return out


def compare(a: dict, b: dict) -> dict:
    """Default Full mAP of row a minus row b, with its standard error: the paired bootstrap over
    the layouts and, where both rows have several seeds, the spread between seeds."""
    diff = a["map"]["default"]["full"] - b["map"]["default"]["full"]
    se_layouts = float(np.std(np.array(a["bootstrap"]) - np.array(b["bootstrap"]), ddof=1))
    se_seeds = 0.0
    for row in (a, b):
        values = row["map_full_seeds"]
        if len(values) > 1:
            se_seeds += float(np.var(values, ddof=1)) / len(values)
    se = math.sqrt(se_layouts ** 2 + se_seeds)
    z = diff / se if se > 0 else (float("nan") if diff == 0 else math.copysign(float("inf"), diff))
    return {"difference": diff, "se": se, "se_layouts": se_layouts, "se_seeds": math.sqrt(se_seeds), "z": z}


# ----------------------------------------------------------------------------- verbs of found pairs

def is_twin_scene(record: dict) -> bool:
    """A toy test image holding two interactions of group-partner categories (same subject and
    object classes, the same box geometry, different verbs): the caption names both verbs and
    cannot say which subject does which."""
    from dataset.toy import group_partners
    ids = [h["hoi_category_id"] for h in record["hoi_annotation"]]
    return any(b in {p.id for p in group_partners(a)} for i, a in enumerate(ids) for b in ids[i + 1:])


def pair_verb_accuracy(gt: list[dict], detections: list[dict], iou_threshold: float = 0.5) -> dict[str, dict]:
    """Per scene kind ("twin" / "other", see is_twin_scene): of the ground-truth pairs, the share
    the detector found (a detected pair with both boxes at IoU >= iou_threshold) and, of those,
    the share whose highest-scoring detected verb is the right one. A model that places the
    figures but not the verbs finds the pairs and guesses the verb of twins (chance 50%)."""
    by_name = {d["file_name"]: d for d in detections}
    counts = {kind: [0, 0, 0] for kind in ("twin", "other")}    # pairs, found, verb right
    for record in gt:
        c = counts["twin" if is_twin_scene(record) else "other"]
        det = by_name.get(record["file_name"], {"predictions": [], "hoi_prediction": []})
        boxes = np.array([p["bbox"] for p in det["predictions"]], dtype=np.float64).reshape(-1, 4)
        for h in record["hoi_annotation"]:
            c[0] += 1
            if not len(boxes):
                continue
            sub_iou = box_iou(np.asarray(record["annotations"][h["subject_id"]]["bbox"]), boxes)[0]
            obj_iou = box_iou(np.asarray(record["annotations"][h["object_id"]]["bbox"]), boxes)[0]
            hits = [p for p in det["hoi_prediction"]
                    if sub_iou[p["subject_id"]] >= iou_threshold and obj_iou[p["object_id"]] >= iou_threshold]
            if hits:
                c[1] += 1
                c[2] += max(hits, key=lambda p: p["score"])["category_id"] == h["category_id"]
    return {kind: {"pairs": n, "found": found / n if n else float("nan"),
                   "verb_right": right / found if found else float("nan")}
            for kind, (n, found, right) in counts.items()}


# ----------------------------------------------------------------------------- the tables

def _fmt(value, digits: int) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _pm(stats: dict, scale: float = 100.0, digits: int = 3) -> str:
    if stats["n"] < 2:
        return _fmt(scale * stats["mean"], digits)
    return f"{scale * stats['mean']:.{digits}f} ± {scale * stats['std']:.{digits}f}"


def markdown_table(results: dict) -> str:
    """Rows as the paper's table: FID, KID (mean ± std) and mAP (%) Full/Rare/Non-rare in the
    Default and Known Object settings; with the toy table's extras (seeds, the 95% bootstrap
    interval of Default Full over the layouts, seconds per image) when the rows have them."""
    toy = any("map_full_ci" in r for k, r in results.items() if not k.startswith("_"))
    head = ["model"] + (["seeds"] if toy else []) + ["FID", "KID", "Def Full"] + (["95% interval"] if toy else []) + \
        ["Def Rare", "Def Non-rare", "KO Full", "KO Rare", "KO Non-rare"] + (["s / image"] if toy else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        if name.startswith("_"):
            continue
        kid = "-" if "kid_mean" not in r else f"{r['kid_mean']:.4f} ± {r['kid_std']:.4f}"
        fid = _fmt(r.get("fid"), 2)
        if toy and len(r.get("fid_seeds", [])) > 1:
            fid += " (" + ", ".join(f"{v:.2f}" for v in r["fid_seeds"]) + ")"
        cells = [name] + ([str(r.get("seeds") or "-")] if toy else []) + [fid, kid]
        values = [_fmt(100 * r["map"][setting][group], 2) for setting, group in METRIC_COLUMNS]
        cells.append(values[0])
        if toy:
            ci = r.get("map_full_ci")
            cells.append("-" if ci is None else f"{100 * ci[0]:.1f}-{100 * ci[1]:.1f}")
        cells += values[1:]
        if toy:
            cells.append(_fmt(r.get("seconds_per_image"), 3))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparison_table(results: dict, row_names: Mapping[str, str] | None = None) -> str:
    """The differences the claim rests on, in Default Full mAP points, with their standard errors.
    `row_names`: the rows' display names by the keys the comparisons use (keys shown otherwise)."""
    comparisons = results.get("_meta", {}).get("comparisons", {})
    if not comparisons:
        return ""
    names = dict(row_names or {})
    lines = ["| comparison | difference | SE (layouts, seeds) | z |", "|---|---|---|---|"]
    for key, c in comparisons.items():
        a, b = key.split(" - ")
        lines.append(f"| {names.get(a, a)} − {names.get(b, b)} | {100 * c['difference']:+.2f} | {100 * c['se']:.2f} "
                     f"({100 * c['se_layouts']:.2f}, {100 * c['se_seeds']:.2f}) | {c['z']:.1f} |")
    return "\n".join(lines) + "\n"


def variant_table(results: dict) -> str:
    """The rows that have a layout gain: the gain (%) (mean ± std over seeds), and the mAP over the
    non-human-subject and non-contact categories."""
    head = ["model", "seeds", "layout gain", "mAP non-human subj.", "mAP non-contact"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        if name.startswith("_") or "layout_gain" not in r:
            continue
        groups = r.get("map_groups", {})
        cells = [name, str(r["layout_gain"]["n"]), _pm(r["layout_gain"]),
                 _fmt(100 * groups.get("non_human_subject", float("nan")), 2),
                 _fmt(100 * groups.get("non_contact", float("nan")), 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def pair_verb_table(results: dict) -> str:
    """Verbs of the pairs the detector found, in twin scenes and in the others (pair_verb_accuracy)."""
    head = ["model", "pairs found, twin scenes", "verb right, twin scenes", "pairs found, other", "verb right, other"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        if name.startswith("_") or "pair_verbs" not in r:
            continue
        v = r["pair_verbs"]
        lines.append("| " + " | ".join([name] + [_fmt(100 * v[kind][k], 1) for kind in ("twin", "other")
                                                 for k in ("found", "verb_right")]) + " |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""
