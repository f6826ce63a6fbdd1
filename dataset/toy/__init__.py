"""The toy HOI world: a procedural, seed-deterministic scene generator written in the
HICO-DET detector formats, small enough to train and evaluate on a laptop CPU.

    python -m dataset.toy generate --out data/toy --train 20000 --test 1000

Python API: `generate` writes a data set; `render_scene` / `render_image` draw one scene and
return (image, annotations, per-instance masks); `plan_image` says what an image shows
without drawing it; the vocabulary is in OBJECTS, VERBS and HOI_CATEGORIES.
"""
from .categories import (HOI_BY_ID, HOI_CATEGORIES, OBJECT_BY_ID, OBJECT_BY_NAME, OBJECTS, RARE_IDS,
                         RARE_SPAN, VERB_BY_ID, VERB_BY_NAME, VERBS, HOICategory, ObjectCategory, Verb,
                         categories_dict, find_hoi, group_partners, hoi_names)
from .generate import ANNOTATION_FILES, count_hois, generate, is_complete, is_current, world_mismatch
from .world import Plan, image_rng, plan_image, rare_schedule, render_image, render_scene

__all__ = [
    "OBJECTS", "VERBS", "HOI_CATEGORIES", "OBJECT_BY_ID", "OBJECT_BY_NAME", "VERB_BY_ID", "VERB_BY_NAME",
    "HOI_BY_ID", "RARE_IDS", "RARE_SPAN", "ObjectCategory", "Verb", "HOICategory", "categories_dict",
    "find_hoi", "group_partners", "hoi_names", "generate", "is_complete", "is_current", "world_mismatch", "count_hois", "ANNOTATION_FILES", "Plan",
    "image_rng", "plan_image", "rare_schedule", "render_image", "render_scene",
]
