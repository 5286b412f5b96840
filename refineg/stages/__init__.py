"""ReFineG's stages: synthesis (gold seeds -> labelled training posts); refinement and grounding follow."""
