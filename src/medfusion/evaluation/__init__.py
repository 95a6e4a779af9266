"""Scoring on the units a reader cares about: visits, patients, intervals, paired comparisons."""
