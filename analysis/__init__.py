"""hyla.analysis."""
