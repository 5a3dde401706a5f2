"""What the model attends to: extraction through the hook points (:mod:`.attention`), the
original toolkit's metrics and more (:mod:`.metrics`), insights, recommendations and their
ablation check (:mod:`.insights`), and the figures and slider panels (:mod:`.figures`)."""
