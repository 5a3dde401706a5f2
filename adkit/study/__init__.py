"""The compression study: every strategy at several budgets, training-free (:mod:`.training_free`)
and retrained (:mod:`.retrained`), on one resumable cell loop (:mod:`.cells`), summarised
(:mod:`.summaries`), drawn from its tables (:mod:`.figures`), and the one-page report
(:mod:`.report`)."""
