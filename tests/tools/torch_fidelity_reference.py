"""Run torch-fidelity's own feature extractor and FID/KID code on two image folders (for
tests/test_fid_kid.py's parity test); prints nothing, writes an .npz.

    python tests/tools/torch_fidelity_reference.py WEIGHTS REAL_DIR FAKE_DIR OUT.npz SUBSETS SUBSET_SIZE

torch-fidelity's package __init__ and its `utils` module import torchvision, which cannot be
imported beside the CPU torch of this project's install. The code compared here does not use
them: the extractor module (feature_extractor_inceptionv3) imports only torch and its helpers,
and the metric functions (fid_features_to_statistics, fid_statistics_to_metric,
kid_features_to_metric) only numpy. So this process registers the package without running its
__init__ and stands in an empty module for `torch_fidelity.utils`; everything that computes is
torch-fidelity's own. It runs in its own process so those stand-ins never meet the test's modules.
"""
import importlib.util
import os
import sys
import types

import numpy as np
import torch
from PIL import Image


def load_torch_fidelity():
    spec = importlib.util.find_spec("torch_fidelity")
    package = types.ModuleType("torch_fidelity")
    package.__path__ = [os.path.dirname(spec.origin)]
    sys.modules["torch_fidelity"] = package
    utils = types.ModuleType("torch_fidelity.utils")
    for name in ("get_cacheable_input_name", "cache_lookup_one_recompute_on_miss",
                 "extract_featuresdict_from_input_id_cached", "create_feature_extractor", "resolve_feature_extractor",
                 "resolve_feature_layer_for_metric", "cache_lookup_group_recompute_all_on_any_miss"):
        setattr(utils, name, None)
    sys.modules["torch_fidelity.utils"] = utils
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    return FeatureExtractorInceptionV3, fid_features_to_statistics, fid_statistics_to_metric, kid_features_to_metric


def main(weights, real, fake, out, subsets, subset_size):
    extractor_cls, to_statistics, statistics_to_fid, kid = load_torch_fidelity()
    extractor = extractor_cls("inception-v3-compat", ["2048"], feature_extractor_weights_path=weights)
    features = []
    for folder in (real, fake):
        rows = []
        for name in sorted(os.listdir(folder)):
            image = np.asarray(Image.open(os.path.join(folder, name)).convert("RGB"))
            with torch.no_grad():
                rows.append(extractor(torch.from_numpy(image.copy()).permute(2, 0, 1)[None])[0])
        features.append(torch.cat(rows))
    fid = statistics_to_fid(to_statistics(features[0]), to_statistics(features[1]), verbose=False)
    k = kid(features[0], features[1], kid_subsets=int(subsets), kid_subset_size=int(subset_size), verbose=False)
    np.savez(out, real=features[0].numpy(), fake=features[1].numpy(), fid=fid["frechet_inception_distance"],
             kid_mean=k["kernel_inception_distance_mean"], kid_std=k["kernel_inception_distance_std"])


if __name__ == "__main__":
    main(*sys.argv[1:])
