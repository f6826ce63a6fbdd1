"""Experiments: runs that train, generate and score to produce the README's tables. They may
import any part of the project; no library package imports them."""
