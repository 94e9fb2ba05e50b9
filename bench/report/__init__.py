"""What a results directory says: summaries (:mod:`bench.report.analysis`),
results.md and summary.json (:mod:`bench.report.tables`), PNG plots
(:mod:`bench.report.plots`)."""
