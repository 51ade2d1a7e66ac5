"""``e2v app``: a browser UI for generation and evaluation (gradio; the ``app`` extra)."""
