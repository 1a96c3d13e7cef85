"""What every lit-grok task's labels share."""

IGNORE = -100  # the label of positions without a target (padding): skipped by the loss and the metrics
