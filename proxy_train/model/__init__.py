"""The hybrid LM: `lm` (HylaLM, HybridBlock), `mixers` (one token mixer per kind), `hf` / `hf_config` (the
transformers wrapper) and `loss` (the token-mean cross-entropy of every loop)."""
