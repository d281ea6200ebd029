"""hyla.proxy_train: the hybrid LM (`model`), its HF wrapper (`hf`), data (`data`, `tasks`), mixers (`mixers`) and
the proxy trainer (`train.run_proxy`). Submodules are imported on use so that light imports stay light."""
