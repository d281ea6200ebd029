"""hyla.proxy_train."""
