"""The teacher stage: rationales from a large LLM, cached so that no prompt is paid for twice."""
