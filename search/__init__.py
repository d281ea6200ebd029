"""hyla.search: Optuna layout searches run by Ray proxy workers.

``config`` (StudyConfig from YAML), ``prepare`` (validation before any work), ``study`` (the ask/tell driver:
``run_search``), ``rungs`` (Pareto/top-k promotion), ``workers`` (Ray actors), ``storage`` (journal/RDB), ``cli``
(``hyla search run|status|promote``). Rung r of study NAME is the Optuna study ``NAME/rung<r>``.
"""
