"""Benchmarks of ``logmesh bench``: our pipeline against baselines, in the same invocation.

Imported only by ``logmesh bench`` (and its tests); nothing here changes the running process.
``_trials`` (one trial per fresh process), ``_scenarios`` (trials alternated, medians),
``_report`` (targets and tables), ``_grouping`` (the aggregator alone), ``_cli``/``_options``.
"""
