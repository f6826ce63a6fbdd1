"""Training data: HICO-DET readers (official .mat, detector JSON, per-image torch files),
the preprocessing of docs/reference.md §4, and the toy HOI world (`dataset.toy`)."""
