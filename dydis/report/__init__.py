"""`dydis report`: a sweep's variants side by side, from the artifacts that scored their models.

``scores`` turns eval-metrics and downstream-gbt artifacts into one row per model, metric and
value, each model labelled with its variant and seed; ``stats`` summarises the rows per variant
and compares every variant with the baseline; ``curves`` reads the per-step evaluation columns
of the models' training logs; ``render`` writes report.md, a self-contained report.html and
the long report.csv.
"""
