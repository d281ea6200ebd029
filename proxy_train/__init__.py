"""hyla.proxy_train: train and score one layout briefly (a proxy), and train it at full scale.

Subpackages, lowest first (each imports only those before it): `model` (the hybrid LM, its token mixers, its
transformers wrapper and loss), `tasks` (synthetic recall tasks), `train` (text data, row order, the training step,
LR schedule, evaluation and full-scale runs), `probe` (the recall probe), `proxy` (`run_proxy`, `ProxyConfig`,
`ProxyResult`: what a search trial runs). Submodules are imported on use so that light imports stay light.
"""
