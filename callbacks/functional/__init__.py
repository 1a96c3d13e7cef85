"""The pure math of the callbacks: one module per callback it serves, tensors and arrays in, numbers out.

Testable without a Trainer: nothing here imports Lightning. A violated precondition raises ``ValueError``.
"""
