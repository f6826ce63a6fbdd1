"""Leaf modules shared by every layer (records, file I/O, device, grid); imports nothing of the project."""
