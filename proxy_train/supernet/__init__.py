"""One-shot placement search (issue 32): a weight-sharing supernet over a study's layouts.

Every layer holds the teacher's softmax attention and one trainable linear branch per mixer kind of the search
space (`model.Supernet`); each training step samples layouts from the study's own `SearchSpace` (`choices`) and
distils them towards the teacher (`train`); afterwards any layout of the space is scored by inheritance, many in one
batched pass (`score`), and the sub-network a layout picks is exactly that layout's `HylaLM` (`Supernet.extract`).
"""
