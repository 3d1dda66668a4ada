"""Pure tensor maths of VerIPO's training phases: advantages, policy losses and their aggregation, KL
estimators, the DPO loss (each a registry of functions) and shared-prefix log-probs on Qwen2.5-VL."""
