"""The student stage: distillation pairs, LoRA fine-tuning, quality, batch inference."""
