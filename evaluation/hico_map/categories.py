"""HOI category tables: (subject, verb, object) triplets, ids, rare flags and names, from a
categories.json, from the toy world's code, or HICO-DET's 600 from its training annotations."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from dataset.hico_names import OBJECT_NAMES, PERSON_ID, VERB_NAMES

from .parsing import _GT_FIELDS, HOIEvalError, _index, _load_json_list, _parse_images

HICO_NUM_CATEGORIES = 600
RARE_THRESHOLD = 10          # rare: fewer than 10 training instances (docs/reference.md §4)


@dataclass(frozen=True)
class HOICategory:
    id: int
    subject_id: int | None   # object id of the subject class; None: any subject (HICO: always person)
    verb_id: int
    object_id: int
    rare: bool


class HOICategories:
    """The HOI category table: ids, (subject, verb, object) triplets, rare flags, names.

    Either every category names its subject class (the toy world: person / robot) and
    pairs are looked up by (subject, verb, object), or none does (HICO-DET) and pairs are
    looked up by (verb, object). `ids_defined` says whether the ids come from a file (so a GT
    pair's `hoi_category_id` can be checked against them)."""

    def __init__(self, categories: Iterable[HOICategory], object_names: dict[int, str],
                 verb_names: dict[int, str], source: str = "categories", ids_defined: bool = True):
        self.source = source
        self.categories: tuple[HOICategory, ...] = tuple(sorted(categories, key=lambda c: c.id))
        self.object_names = dict(object_names)
        self.verb_names = dict(verb_names)
        self.ids_defined = ids_defined
        if not self.categories:
            raise HOIEvalError(f"{source}: no HOI categories")
        self.object_ids = np.array(sorted(self.object_names), dtype=np.int64)
        self.verb_ids = np.array(sorted(self.verb_names), dtype=np.int64)
        with_subject = [c.subject_id is not None for c in self.categories]
        if any(with_subject) and not all(with_subject):
            raise HOIEvalError(f"{source}: either every HOI category names its subject or none does")
        self.by_subject = all(with_subject)
        n_obj, n_verb = len(self.object_ids), len(self.verb_ids)
        self._table = np.full((n_obj if self.by_subject else 1, n_verb, n_obj), -1, dtype=np.int64)
        seen_ids: set[int] = set()
        for k, cat in enumerate(self.categories):
            where = f"{source}: HOI category {cat.id}"
            if cat.id in seen_ids:
                raise HOIEvalError(f"{where}: id appears twice")
            seen_ids.add(cat.id)
            s = int(_index(self.object_ids, cat.subject_id)) if self.by_subject else 0
            v, o = int(_index(self.verb_ids, cat.verb_id)), int(_index(self.object_ids, cat.object_id))
            for name, value, ok in (("subject_id", cat.subject_id, s), ("verb_id", cat.verb_id, v),
                                    ("object_id", cat.object_id, o)):
                if ok < 0:
                    raise HOIEvalError(f"{where}: {name} {value!r} is not a known "
                                       f"{'verb' if name == 'verb_id' else 'object'} id")
            if self._table[s, v, o] >= 0:
                other = self.categories[self._table[s, v, o]].id
                raise HOIEvalError(f"{where}: same (subject, verb, object) as category {other}")
            self._table[s, v, o] = k
        self.ids = np.array([c.id for c in self.categories], dtype=np.int64)
        self.rare = np.array([c.rare for c in self.categories], dtype=bool)
        self.object_column = _index(self.object_ids, [c.object_id for c in self.categories])

    def __len__(self) -> int:
        return len(self.categories)

    def lookup(self, subject_ids, verb_ids, object_ids) -> np.ndarray:
        """Category positions (0..len-1) of (subject id, verb id, object id) triplets; -1 for a
        triplet that is not a listed category or has an unknown id."""
        s = _index(self.object_ids, subject_ids) if self.by_subject else np.zeros(np.shape(verb_ids), np.int64)
        v, o = _index(self.verb_ids, verb_ids), _index(self.object_ids, object_ids)
        ok = (s >= 0) & (v >= 0) & (o >= 0)
        out = np.full(v.shape, -1, dtype=np.int64)
        out[ok] = self._table[s[ok], v[ok], o[ok]]
        return out

    def names(self, k: int) -> tuple[str, str, str]:
        """(subject, verb, object) names of the category at position k; a table without subjects
        (HICO) names the person class."""
        cat = self.categories[k]
        subject = self.object_names[cat.subject_id] if cat.subject_id is not None \
            else self.object_names.get(PERSON_ID, "any")
        return subject, self.verb_names[cat.verb_id], self.object_names[cat.object_id]

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_file(cls, path) -> "HOICategories":
        """A `categories.json` (the toy world's, or any custom table): "objects" and "verbs"
        [{id, name}] (read by `dataset.hico.load_category_file`) and "hoi_categories"
        [{id, subject_id (optional), verb_id, object_id, rare}]."""
        from dataset.hico import load_category_file  # imports torch: only when a file is read

        path = Path(path)
        object_names, verb_names = load_category_file(path)
        data = json.loads(path.read_text())
        entries = data.get("hoi_categories")
        if not isinstance(entries, list) or not entries:
            raise HOIEvalError(f"{path}: hoi_categories: expected a non-empty list of "
                               "{id, subject_id, verb_id, object_id, rare}")
        cats = []
        for i, entry in enumerate(entries):
            where = f"{path}: hoi_categories[{i}]"
            if not isinstance(entry, dict):
                raise HOIEvalError(f"{where} = {entry!r}: expected an object")
            values = {}
            for name in ("id", "subject_id", "verb_id", "object_id"):
                value = entry.get(name)
                if name == "subject_id" and value is None:
                    values[name] = None
                    continue
                if isinstance(value, bool) or not isinstance(value, int):
                    raise HOIEvalError(f"{where}.{name} = {value!r}: expected an integer")
                values[name] = value
            rare = entry.get("rare")
            if not isinstance(rare, bool):
                raise HOIEvalError(f"{where}.rare = {rare!r}: expected true or false")
            cats.append(HOICategory(rare=rare, **values))
        return cls(cats, object_names, verb_names, source=str(path))

    @classmethod
    def toy(cls) -> "HOICategories":
        """The toy world's categories from its code (dataset/toy/categories.py): no data needed."""
        from dataset.toy.categories import HOI_CATEGORIES, OBJECTS, VERBS
        cats = [HOICategory(id=h.id, subject_id=h.subject_id, verb_id=h.verb_id, object_id=h.object_id, rare=h.rare)
                for h in HOI_CATEGORIES]
        return cls(cats, {o.id: o.name for o in OBJECTS}, {v.id: v.name for v in VERBS}, source="toy world")

    @classmethod
    def hico(cls, train_records=None, *, hoi_list=None, hoi_id_to_num=None,
             expected: int | None = HICO_NUM_CATEGORIES) -> "HOICategories":
        """HICO-DET's (verb, object) categories, subject always person, objects by COCO id and
        verbs 1..117 (`dataset.hico_names`).

        - `train_records`: `trainval_hico.json` (path or its list of images). The categories are
          its distinct (verb, object) pairs; a category is rare when it has fewer than 10
          training pairs (the official rule: 138 of 600). Ids are the records' `hoi_category_id`
          (QPIC's JSON carries the official 1..600); records without them get ids 1..N in
          (object id, verb id) order, which are NOT the official numbers.
        - `hoi_list`: FGAHOI/GGNet `hoi_list_new.json` ([{"id": "001", "object_cat": COCO id,
          "verb_id": 1..117, ...}]): the official 600 with their ids, instead of the records.
        - `hoi_id_to_num`: FGAHOI's `hoi_id_to_num.json` ({"001": {"rare": bool, ...}}): the rare
          flags, instead of counting `train_records`.
        `expected` (600) is the number of categories required; None accepts any."""
        if train_records is None and hoi_list is None:
            raise HOIEvalError(
                "HICO-DET's 600 HOI categories and their rare flags (fewer than 10 training instances) "
                "are derived from the training annotations: pass train_records=trainval_hico.json "
                "(CLI --train), or a categories.json with hoi_categories and rare flags (--categories)")
        counts: dict[tuple[int, int], int] = {}
        record_ids: dict[tuple[int, int], int] = {}
        source = "hoi_list"
        if train_records is not None:
            records, source = _load_json_list(train_records, "training annotations")
            counts, record_ids = _count_train_pairs(records, source)
        if hoi_list is not None:
            triplets, list_source = _read_hoi_list(hoi_list)
            source = list_source if train_records is None else f"{source} + {list_source}"
            ids = triplets
        elif record_ids:
            ids = record_ids
        else:
            ids = {key: k + 1 for k, key in enumerate(sorted(counts, key=lambda vo: (vo[1], vo[0])))}
        if hoi_id_to_num is not None:
            rare_by_id = _read_hoi_id_to_num(hoi_id_to_num)
            missing = [i for i in ids.values() if i not in rare_by_id]
            if missing:
                raise HOIEvalError(f"{hoi_id_to_num}: no rare flag for HOI ids {missing[:5]}")
            rare = {key: rare_by_id[i] for key, i in ids.items()}
        elif train_records is not None:
            rare = {key: counts.get(key, 0) < RARE_THRESHOLD for key in ids}
        else:
            raise HOIEvalError(f"{source}: the rare flags need train_records=trainval_hico.json "
                               "(--train) or hoi_id_to_num=hoi_id_to_num.json")
        if expected is not None and len(ids) != expected:
            raise HOIEvalError(f"{source}: {len(ids)} distinct (verb, object) HOI categories, HICO-DET has "
                               f"{expected}: give the complete trainval_hico.json (or expected=None to "
                               "evaluate with this table)")
        cats = [HOICategory(ident, None, verb, obj, rare[(verb, obj)]) for (verb, obj), ident in ids.items()]
        return cls(cats, OBJECT_NAMES, VERB_NAMES, source=source,
                   ids_defined=bool(hoi_list is not None or record_ids))


def _count_train_pairs(records: list, source: str):
    batch = _parse_images(records, source, _GT_FIELDS, None)
    verbs, objects = batch.verb, batch.labels[batch.obj]
    for name, ids, table, key_name in (("verb", verbs, VERB_NAMES, "category_id"),
                                    ("object", objects, OBJECT_NAMES, "object_id")):
        bad = np.nonzero(~np.isin(ids, list(table)))[0]
        if bad.size:
            n, h = batch.locate_pair(int(bad[0]))
            raise HOIEvalError(f"{source}: image {batch.file_names[n]!r}: hoi_annotation[{h}].{key_name}: "
                               f"{name} id {ids[bad[0]]} is not a HICO-DET {name}")
    counts: dict[tuple[int, int], int] = {}
    ids: dict[tuple[int, int], int] = {}
    keys, n_keys = np.unique(np.stack([verbs, objects], axis=1).reshape(-1, 2), axis=0, return_counts=True)
    for (verb, obj), count in zip(keys.tolist(), n_keys.tolist()):
        counts[(verb, obj)] = count
    given = [k for k, hid in enumerate(batch.hoi_ids) if hid is not None]
    if len(given) not in (0, len(batch.hoi_ids)):
        raise HOIEvalError(f"{source}: hoi_category_id is given for {len(given)} of {len(batch.hoi_ids)} pairs: all or none")
    for k in given:
        key, hid = (int(verbs[k]), int(objects[k])), batch.hoi_ids[k]
        if ids.setdefault(key, hid) != hid:
            n, h = batch.locate_pair(k)
            raise HOIEvalError(f"{source}: image {batch.file_names[n]!r}: hoi_annotation[{h}].hoi_category_id "
                               f"{hid} differs from {ids[key]} given to the same (verb, object) {key}")
    return counts, ids


def _read_hoi_list(hoi_list):
    entries, source = _load_json_list(hoi_list, "hoi_list")
    out: dict[tuple[int, int], int] = {}
    for i, entry in enumerate(entries):
        try:
            key, ident = (int(entry["verb_id"]), int(entry["object_cat"])), int(entry["id"])
        except (KeyError, TypeError, ValueError):
            raise HOIEvalError(f"{source}: entry {i} = {entry!r}: expected {{id, verb_id, object_cat}}") from None
        if key in out:
            raise HOIEvalError(f"{source}: entry {i}: (verb, object) {key} listed twice")
        out[key] = ident
    return out, source


def _read_hoi_id_to_num(value) -> dict[int, bool]:
    data = json.loads(Path(value).read_text()) if isinstance(value, (str, Path)) else value
    try:
        return {int(k): bool(v["rare"]) for k, v in data.items()}
    except (AttributeError, KeyError, TypeError, ValueError):
        raise HOIEvalError(f"{value if isinstance(value, (str, Path)) else 'hoi_id_to_num'}: "
                           'expected {"001": {"rare": bool, ...}, ...}') from None

