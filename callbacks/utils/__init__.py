"""The plumbing the callbacks share: parameter selection, evaluation, hidden-state capture, result files,
the scheduled and per-row analysis bases, the protocols and the errors."""
