"""Benchmarks of the paper: DAVIS J&F, JHMDB PCK and VIP mIoU, by label propagation on frozen features.

One module per benchmark (:mod:`~siammae.evaluation.davis`, :mod:`~siammae.evaluation.jhmdb`,
:mod:`~siammae.evaluation.vip`) reads its data set layout and supplies the per-benchmark pieces of a
:class:`~siammae.evaluation.protocol.Benchmark`; the two paths, ``score_results`` (existing predictions) and
``run_model`` (propagate, write, score), are written once in :mod:`~siammae.evaluation.protocol`, and the tables go
through :class:`~siammae.evaluation.results.ResultsDir`. :func:`~siammae.evaluation.benchmark.evaluate` is the entry
point of ``siammae-eval``.
"""
