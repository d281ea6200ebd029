"""The recall probe: MQAR trained on its own, apart from the LM (`config` says why and how)."""
