"""hyla.search."""
