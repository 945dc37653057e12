"""Configuration-driven fine-tuning: ``peftkit train run.yaml``."""
