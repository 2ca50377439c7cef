"""The experiment harness: presets (supplement Table 1), training runs, comparison, reports.

This layer may use numpy, scipy, yaml, matplotlib and tqdm (the ``experiments`` extra);
each is imported lazily inside the functions that need it.
"""
