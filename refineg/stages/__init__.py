"""ReFineG's stages: synthesis (gold seeds -> labelled training posts) and refinement (delegation to an MLLM)."""
