"""Evaluation: FID/KID, HICO-DET HOI detection mAP, detector adapters, table builders."""
