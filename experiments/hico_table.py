"""The paper's table from real runs (`python scripts/reproduce_table.py --world hico`): FID/KID
of generated image folders against the real test images, and HOI detection mAP from the
detection files of a HOI detector (FGAHOI) run on them."""
from __future__ import annotations

from pathlib import Path

from evaluation.hico_map import HOICategories, evaluate_hoi_map, read_detections, read_fgahoi, read_ground_truth
from evaluation.table_stats import CEILING_ROW


def run_hico(rows: list[tuple[str, str, str]], real: str, gt_path: str, train_path: str | None,
             categories_path: str | None, extractor: str, weights: str | None, fmt: str = "json",
             allow_pickle: bool = False, ceiling: str | None = None, device: str = "cpu",
             protocol: str | None = None) -> dict:
    """`rows`: (name, generated image folder, detections file). `ceiling`: detections on the
    real test images (the real-data row). `protocol`: a FID/KID protocol of evaluation.fid_kid
    ("interactdiffusion": the paper's torch-fidelity numbers), which fixes the extractor."""
    from evaluation.fid_kid import PROTOCOLS, build_extractor, compute_fid_kid
    fid_protocol = PROTOCOLS[protocol] if protocol else None
    gt = read_ground_truth(gt_path)
    if categories_path:
        categories = HOICategories.from_file(categories_path)
    else:
        if train_path is None:
            raise ValueError("--train trainval_hico.json (for the rare categories) or --categories is needed")
        categories = HOICategories.hico(train_records=read_ground_truth(train_path))
    feature_net = build_extractor(fid_protocol.extractor if fid_protocol else extractor, weights, device)

    def detections(path):
        if fmt == "fgahoi":
            return read_fgahoi(path, gt, categories, allow_pickle=allow_pickle)
        return read_detections(path, gt, categories)

    results = {}
    for name, folder, dets in rows:
        if fid_protocol:
            metrics = compute_fid_kid(real, folder, feature_net, kid_subsets=fid_protocol.kid_subsets,
                                      kid_subset_size=fid_protocol.kid_subset_size, seed=fid_protocol.seed,
                                      device=device, mixed_sizes=True, protocol=fid_protocol)
        else:
            metrics = compute_fid_kid(real, folder, feature_net, device=device)
        results[name] = {**metrics, "map": evaluate_hoi_map(gt, detections(dets), categories).summary}
    if ceiling:
        results[CEILING_ROW] = {"map": evaluate_hoi_map(gt, detections(ceiling), categories).summary}
    return results


# The paper's three rows, generated from one layout file: (folder name, what --row calls it).
PAPER_ROWS = (("sd", "Stable Diffusion"), ("gligen", "GLIGEN"), ("interactdiffusion", "InteractDiffusion"))


def generate_rows(layouts: str, out: str, sd_ckpt: str, gligen_ckpt: str, interact_ckpt: str,
                  seed: int = 0, sampling: dict | None = None, configs: dict | None = None,
                  device: str = "auto", batch_size: int = 1) -> dict[str, str]:
    """Images of the paper's three rows for every record of `layouts`, with the same seeds:
    Stable Diffusion alone (`sd_ckpt`; the prompts only), GLIGEN (`gligen_ckpt`; the interactions'
    subjects and objects as phrases and boxes) and InteractDiffusion (`interact_ckpt`, with
    `sd_ckpt` as the backbone when it holds the interaction weights only). `configs`: a model
    config per row name (default: chosen from the files). Resumes: finished records are kept.
    Returns {row name: image folder}; run the HOI detector on each and pass them as --row."""
    from interact.batch import batch_options, run_batch
    from interact.checkpoint.diffusers_folder import peek_kind
    interact_is_full = peek_kind(interact_ckpt) not in ("interaction_weights", "webui_extension")
    files = {"sd": {"sd_ckpt": sd_ckpt}, "gligen": {"ckpt": gligen_ckpt},
             "interactdiffusion": {"ckpt": interact_ckpt, **({} if interact_is_full else {"sd_ckpt": sd_ckpt})}}
    folders = {}
    for key, name in PAPER_ROWS:
        folder = str(Path(out) / key)
        options = batch_options({**files[key], "input": layouts, "folder": folder, "seed": seed, "device": device,
                                 "batch_size": batch_size, "no_overwrite": True,
                                 "config": str((configs or {}).get(key, ""))})
        run_batch(options, sampling or {})
        folders[name] = folder
    return folders
