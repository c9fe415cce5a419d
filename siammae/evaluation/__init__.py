"""Benchmarks of the paper: DAVIS J&F, JHMDB PCK and VIP mIoU, by label propagation on frozen features.

One module per benchmark (:mod:`~siammae.evaluation.davis`, :mod:`~siammae.evaluation.jhmdb`,
:mod:`~siammae.evaluation.vip`) reads the data set layout, runs a model (``evaluate_model``) or scores existing
predictions (``evaluate_results``), and writes the tables through :class:`~siammae.evaluation.results.ResultsDir`.
"""
