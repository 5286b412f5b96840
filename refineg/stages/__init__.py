"""ReFineG's stages after the small tagger: refinement (uncertainty-based delegation to an MLLM)."""
