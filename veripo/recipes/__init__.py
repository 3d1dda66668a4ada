"""Recipes: one readable program per phase (sft, grpo, verify, dpo) and ``veripo.py``, the loop that reads
like the paper's Figure 2. They own the run directory, checkpoints and resume; layers never import them."""
