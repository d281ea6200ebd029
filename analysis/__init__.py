"""hyla.analysis: read finished (or running) searches.

- `study_data.load_study(source)` -> `StudyData` of `TrialRecord`s (journal file, run dir, study YAML or RDB URL)
- `pareto`: non-dominated sets, knee point, named picks (knee, best-recall, min-kv, best-loss)
- `plots`: plotly Pareto fronts (imported lazily), `write_html` / `write_png`
- `report`: one self-contained HTML page per study
- `significance`: neighbours on a front compared beyond seed noise (Welch's t-test, interval overlap)
- `export`: layout.yaml, the HF model (config.json, weights from a `hyla train` checkpoint), fla/ (fla's config and
  fla-named weights, `export_weights`), full_run.yaml of one trial or checkpoint
- `calibrate`: proxy vs reference rank agreement (Spearman, Kendall, bootstrap CIs)

Nothing heavy is imported here, so ``import hyla.analysis`` stays cheap for the search driver.
"""
