"""Offline tooling: data split, training, evaluation, comparison, benchmark, model card, gallery builder.

The app's runtime half (``tumor.io``, ``tumor.pipeline``, ...) never imports this package.
"""
