"""LM training shared by proxies and full runs: `text` (corpora, tokenizers, packing), `stream` (the seeded row
order), `config` (TrainConfig), `schedule` (the LR schedule), `trainer` (the optimizer step), `evaluate` (held-out
LM loss); full runs: `full_spec` (RunSpec), `full_loop` (the Ray Train worker loop), `cli` (``hyla train``)."""
