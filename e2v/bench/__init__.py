"""Evaluation of E2V models and videos (pixel metrics against ground truth; A2-Bench-style scorers)."""
