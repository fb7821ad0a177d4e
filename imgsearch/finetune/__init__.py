"""Fine-tuning the catalog's model on the shop's own pairs (``imgsearch finetune``): the pairs
(:mod:`.pairs`), training (:mod:`.training`), held-out figures (:mod:`.scoring`), and the run that
registers, backfills and (when it wins) activates the result (:mod:`.run`)."""
